"""The unified model: every modality's tokens in one sequence through one decoder.

Discrete modalities share one embedding table (the unified vocabulary); continuous signals are
projected to the model width and written into their reserved positions. The compiler traces
exactly this module on the meta device, so the graph it costs is the model that trains.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vlac.spec import Experiment

from .layers import MLP, Attention, make_norm
from .masks import attention_mask
from .moe import MoELayer


class Block(nn.Module):
    def __init__(self, exp: Experiment, index: int, moe: bool):
        super().__init__()
        bb = exp.backbone
        self.index = index
        self.attn_norm = make_norm(bb, bb.hidden)
        self.attn = Attention(bb)
        self.mlp_norm = make_norm(bb, bb.hidden)
        self.is_moe = moe
        self.mlp = MoELayer(bb, exp.moe) if moe else MLP(bb)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        x = x + self.attn(self.attn_norm(x), mask)
        if self.is_moe:
            y, aux, load, dropped = self.mlp(self.mlp_norm(x))
            return x + y, aux, load, dropped
        return x + self.mlp(self.mlp_norm(x)), None, None, None


class Projector(nn.Module):
    """Continuous signal -> model width: linear, or a 2-layer GELU MLP (LLaVA-1.5 style)."""

    def __init__(self, input_dim: int, hidden: int, kind: str, inner: int | None):
        super().__init__()
        if kind == "linear":
            self.net = nn.Linear(input_dim, hidden)
        else:
            self.net = nn.Sequential(nn.Linear(input_dim, inner or hidden), nn.GELU(), nn.Linear(inner or hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VLAModel(nn.Module):
    """Inputs (one dict, so the traced graph has one placeholder):
    tokens [B,S] unified-vocabulary ids; span [B,S] image-span ids (0 outside a span, used by
    bidirectional masks); prefix [B,S] 1 on prompt positions (prefix-LM); and per continuous
    modality m: `m.features` [B,n,input_dim], `m.index` [B,n] sequence positions, `m.present`
    [B,n] 1 where the sample has the signal."""

    def __init__(self, exp: Experiment):
        super().__init__()
        bb = exp.backbone
        self.exp = exp
        layout = exp.vocab_layout()
        self.vocab_padded = layout.padded
        self.embed = nn.Embedding(layout.padded, bb.hidden)
        self.pos_embed = nn.Embedding(bb.context_length, bb.hidden) if bb.positions == "learned" else None
        self.projectors = nn.ModuleDict({
            name: Projector(m.input_dim, bb.hidden, m.projector, m.projector_hidden)
            for name, m in exp.modalities.items() if m.kind == "continuous"})
        moe_layers = set(exp.moe.moe_layer_indices(bb.layers)) if exp.moe else set()
        self.layers = nn.ModuleList(Block(exp, i, i in moe_layers) for i in range(bb.layers))
        self.norm = make_norm(bb, bb.hidden)
        self.head = nn.Linear(bb.hidden, layout.padded, bias=False)
        if bb.tied_embeddings:
            self.head.weight = self.embed.weight
        self.mask_kind = exp.fusion.attention_mask

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens = batch["tokens"]
        x = self.embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed.weight[: tokens.size(1)]
        for name, proj in self.projectors.items():
            x = _write_continuous(x, proj(batch[f"{name}.features"]), batch[f"{name}.index"], batch[f"{name}.present"])
        mask = attention_mask(self.mask_kind, batch.get("span"), batch.get("prefix"))
        aux_total = x.new_zeros((), dtype=torch.float32)
        loads, drops = [], []
        for block in self.layers:
            x, aux, load, dropped = block(x, mask)
            if block.is_moe:  # decided by the config, so the traced graph has no data-dependent branch
                aux_total = aux_total + aux
                loads.append(load)
                drops.append(dropped)
        logits = self.head(self.norm(x))
        out = {"logits": logits, "aux_loss": aux_total}
        if loads:
            out["expert_load"] = torch.stack(loads)
            out["dropped_fraction"] = torch.stack(drops)
        return out


def _write_continuous(x, projected, index, present):
    """Add projected vectors at their positions; absent signals add zero (static shapes)."""
    contrib = projected * present.unsqueeze(-1).to(projected.dtype)
    idx = index.unsqueeze(-1).expand(-1, -1, x.size(-1))
    return x + torch.zeros_like(x).scatter_add(1, idx, contrib.to(x.dtype))


def build_model(exp: Experiment, device: str | torch.device = "cpu", seed: int | None = None) -> VLAModel:
    """The model of an experiment, on `cpu`/`cuda` (initialised) or `meta` (shapes only)."""
    device = torch.device(device)
    if device.type == "meta":
        with torch.device("meta"):
            return VLAModel(exp)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(exp.train.seed if seed is None else seed)
    try:
        with torch.device(device):
            model = VLAModel(exp)
        init_weights(model, exp)
    finally:
        torch.random.set_rng_state(gen_state)
    return model


def init_weights(model: VLAModel, exp: Experiment) -> None:
    """GPT-2 style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2*layers)."""
    std = 0.02
    resid_std = std / (2 * exp.backbone.layers) ** 0.5
    for name, p in model.named_parameters():
        if p.dim() < 2 or "router" in name:
            continue
        is_out = name.endswith(("wo.weight", "w2.weight")) or name.endswith("experts.w2")
        nn.init.normal_(p, mean=0.0, std=resid_std if is_out else std)
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
