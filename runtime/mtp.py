"""Multi-token prediction (DeepSeek-V3, arXiv 2412.19437, Sec. 2.2 and Fig. 3).

`losses.mtp.depth` = D modules run after the decoder, one after the other. Module k (1..D) sees,
at position i, the previous module's hidden state h^{k-1}_i (h^0: the decoder's output before
its final norm) and the input embedding of the token k positions ahead, and predicts the token
k+1 positions ahead:

    h'_i = M_k [RMSNorm(Emb(t_{i+k})); RMSNorm(h^{k-1}_i)]      (M_k: 2*hidden -> hidden, no bias)
    h^k  = TRM_k(h')                                             (one decoder block)
    P^k  = OutHead(norm_k(h^k))                                   (the model's head, shared)

The report writes the concatenation as [h; Emb]; DeepSeek's released weights (eh_proj) and
Megatron-Core's MultiTokenPredictionLayer put the embedding first, which only permutes the
columns of M_k: this follows the released weights. The embedding is the model's own input
embedding (shared), so in a multimodal sequence position i+k brings what the decoder got there
(a token's embedding, or a continuous signal's projection). TRM_k is a block of the kind of the
decoder's last layer (dense or MoE; DeepSeek-V3's MTP block is MoE like its later layers), with
that layer's attention window.

Targets: module k at position i predicts targets[i+k], the AR target (the next token) of
position i+k, with the AR loss's masking (-100 where it has none: prompts under mask_prompt,
continuous placeholders, padding); a position within k of the end, or in another document of a
packed row than position i+k, has none. The loss is (lambda / D) * sum_k CE_k, CE_k summed over
its targets with the AR loss's per-modality weights and divided by batch["loss_norm"] like the
AR loss (DeepSeek-V3 divides by the sequence length T, the count of main targets), so
micro-batches and data-parallel ranks add up to the global figure.

Training only: generation (runtime/generate.py) never runs the modules.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlac.spec import Experiment

from .layers import make_norm

IGNORE = -100  # no loss at a target position (runtime/data.py)


def shift_left(x: torch.Tensor, k: int, fill: float | int = 0) -> torch.Tensor:
    """x[:, i + k] at position i along the sequence (dim 1); `fill` on the last k positions."""
    pad = torch.full_like(x[:, :k], fill)
    return torch.cat([x[:, k:], pad], 1)


def mtp_targets(batch: dict[str, torch.Tensor], k: int, packed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets [B, S] of module k (the token k+1 ahead, IGNORE where none) and their modality."""
    targets = shift_left(batch["targets"], k, IGNORE)
    modality = shift_left(batch["target_modality"], k, -1)
    if packed:  # positions i and i+k of one packed row must belong to one document
        doc = batch["document"]
        same = shift_left(doc, k, -1) == doc
        targets = torch.where(same, targets, torch.full_like(targets, IGNORE))
        modality = torch.where(same, modality, torch.full_like(modality, -1))
    return targets, modality


class MTPModule(nn.Module):
    """One prediction depth: the two input norms, the projection M_k, a decoder block and the
    norm before the shared head. forward -> (h^k before the norm, h^k normed, MoE aux, load,
    dropped) (the last three None for a dense block)."""

    def __init__(self, exp: Experiment, block: nn.Module):
        super().__init__()
        bb = exp.backbone
        self.embed_norm = make_norm(bb, bb.hidden)
        self.hidden_norm = make_norm(bb, bb.hidden)
        self.proj = nn.Linear(2 * bb.hidden, bb.hidden, bias=False)
        self.block = block
        self.norm = make_norm(bb, bb.hidden)

    def forward(self, hidden: torch.Tensor, embedded: torch.Tensor, mask: torch.Tensor | None = None,
                stream: torch.Tensor | None = None, positions: torch.Tensor | None = None):
        x = self.proj(torch.cat([self.embed_norm(embedded), self.hidden_norm(hidden)], -1))
        x, aux, load, dropped = self.block(x, mask, stream, positions)
        return x, self.norm(x), aux, load, dropped


def build_mtp(exp: Experiment, make_block) -> nn.ModuleList:
    """The D modules of `losses.mtp` (an nn.ModuleList: each module is one block to the compiler's
    tracer). `make_block(layer, moe)`: the decoder's block of layer `layer`; the MTP blocks copy
    the last layer's kind."""
    bb = exp.backbone
    last = bb.layers - 1
    moe = exp.moe is not None and last in exp.moe.moe_layer_indices(bb.layers)
    return nn.ModuleList(MTPModule(exp, make_block(last, moe)) for _ in range(exp.losses.mtp.depth))


def predict_ahead(modules: nn.ModuleList, head: nn.Module, hidden: torch.Tensor, embedded: torch.Tensor,
                  mask: torch.Tensor | None = None, stream: torch.Tensor | None = None,
                  positions: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[tuple]]:
    """Run the modules on the decoder's output `hidden` (before its final norm) and the input
    embedding `embedded` [B, S, d] of the whole sequence: the logits of each depth, and (aux loss,
    load, dropped fraction, router entropy) of each MoE block."""
    logits, moe = [], []
    for k, module in enumerate(modules, start=1):
        hidden, normed, aux, load, dropped = module(hidden, shift_left(embedded, k), mask, stream, positions)
        logits.append(head(normed))
        if module.block.is_moe:  # decided by the config: no data-dependent branch in the trace
            moe.append((aux, load, dropped, module.block.mlp.router_entropy))
    return logits, moe


def mtp_blocks(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """(key, block) of the MTP modules' blocks, keyed after the decoder's layers (layers + k - 1),
    as the MoE bookkeeping (runtime/parallel/parallelize.py) numbers them."""
    modules = getattr(model, "mtp", None) or []
    return [(model.exp.backbone.layers + k, m.block) for k, m in enumerate(modules)]


def mtp_loss(logits: list[torch.Tensor], batch: dict[str, torch.Tensor], modality_weight: torch.Tensor,
             weight: float, packed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weight / D) * sum_k CE_k (see the module docstring), and per depth the unweighted sums of
    the cross-entropy and the target counts [D] (for reporting the mean CE of each depth)."""
    sums, counts, total = [], [], logits[0].new_zeros((), dtype=torch.float32)
    for k, lg in enumerate(logits, start=1):
        targets, modality = mtp_targets(batch, k, packed)
        valid = targets >= 0
        ce = F.cross_entropy(lg.float().flatten(0, 1), targets.clamp_min(0).flatten(), reduction="none")
        ce = ce.view_as(targets) * valid
        w = modality_weight[modality.clamp_min(0)] * valid
        total = total + (ce * w).sum() / batch["loss_norm"]
        sums.append(ce.sum())
        counts.append(valid.sum().to(ce.dtype))
    return weight / len(logits) * total, torch.stack(sums), torch.stack(counts)
