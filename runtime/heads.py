"""Output heads beside the language-model head: CLIP-style contrastive projections with a learnable
temperature, and the flow-matching velocity head (with its timestep embedding)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlac.spec.training import ContrastiveLoss, FlowMatchingLoss

from .encoders import FourierFeatures

MAX_LOGIT_SCALE = 100.0  # CLIP clamps 1/temperature at 100 so the logits cannot blow up


class ContrastiveHead(nn.Module):
    """Pooled embeddings of the two modalities of `pair` -> shared `embed_dim` space, L2-normalised;
    logits = exp(logit_scale) * a @ b.T with logit_scale = log(1/temperature), learnable or fixed."""

    def __init__(self, hidden: int, cfg: ContrastiveLoss):
        super().__init__()
        self.proj_a = nn.Linear(hidden, cfg.embed_dim, bias=False)
        self.proj_b = nn.Linear(hidden, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature_init)),
                                        requires_grad=cfg.learnable_temperature)

    def forward(self, pooled_a: torch.Tensor, pooled_b: torch.Tensor, present: torch.Tensor):
        """present [B]: 1 where the sample has both modalities. Returns (symmetric InfoNCE loss over
        the present pairs, retrieval accuracy a->b, the logit scale)."""
        a = F.normalize(self.proj_a(pooled_a).float(), dim=-1)
        b = F.normalize(self.proj_b(pooled_b).float(), dim=-1)
        scale = self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
        logits = scale * a @ b.t()
        keep = present > 0
        pair = keep.unsqueeze(0) & keep.unsqueeze(1)
        logits = logits.masked_fill(~pair, -1e4)  # absent samples are neither positives nor negatives
        labels = torch.arange(logits.size(0), device=logits.device)
        w = keep.float()
        n = w.sum().clamp_min(1.0)
        loss_ab = (F.cross_entropy(logits, labels, reduction="none") * w).sum() / n
        loss_ba = (F.cross_entropy(logits.t(), labels, reduction="none") * w).sum() / n
        acc = ((logits.argmax(-1) == labels).float() * w).sum() / n
        return 0.5 * (loss_ab + loss_ba), acc, scale


class FlowHead(nn.Module):
    """Rectified-flow head (Transfusion): the timestep embedding added to the noisy patches'
    positions, and an MLP of `head_layers` layers from the final hidden states to the velocity."""

    def __init__(self, hidden: int, cfg: FlowMatchingLoss, frequencies: int = 8):
        super().__init__()
        self.fourier = FourierFeatures(frequencies)
        self.time_embed = nn.Sequential(nn.Linear(FourierFeatures.out_dim(1, frequencies), hidden), nn.SiLU(),
                                        nn.Linear(hidden, hidden))
        layers: list[nn.Module] = []
        for _ in range(cfg.head_layers - 1):
            layers += [nn.Linear(hidden, hidden), nn.GELU()]
        layers.append(nn.Linear(hidden, cfg.patch_dim))
        self.velocity = nn.Sequential(*layers)

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """t [B] in [0, 1] -> [B, 1, hidden]."""
        return self.time_embed(self.fourier(t.unsqueeze(-1))).unsqueeze(1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.velocity(h)
