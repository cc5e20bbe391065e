"""Mixture of experts with static-shape, capacity-factor dispatch.

Every tensor shape here follows from the input shape and the config, never from routing
decisions, so the layer traces with torch.fx, propagates on meta tensors, counts FLOPs exactly
(capacity over-compute included) and splits into pipeline stages. Integer arithmetic on the
token count is written with // so that, under symbolic tracing, it is recorded in the graph.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlac.spec.architecture import MoE as MoESpec, Backbone

from .layers import MLP

_CF_SCALE = 1000  # capacity factor as an integer ratio keeps capacity an exact integer op


class Router(nn.Module):
    """Scores in fp32 (bf16 logits flip top-k choices); selection may add the aux-loss-free
    balancing bias, which shifts which experts win but not the mixing weights (DeepSeek-V3)."""

    def __init__(self, hidden: int, cfg: MoESpec):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.experts, hidden))
        nn.init.normal_(self.weight, std=hidden ** -0.5)
        self.register_buffer("expert_bias", torch.zeros(cfg.experts))

    def forward(self, h: torch.Tensor):
        logits = F.linear(h.float(), self.weight.float())
        probs = logits.softmax(-1) if self.cfg.router == "softmax" else logits.sigmoid()
        select = probs + self.expert_bias if self.cfg.balancing == "aux_free" else probs
        _, idx = select.topk(self.cfg.top_k, dim=-1)
        weights = probs.gather(-1, idx)
        if self.cfg.router == "sigmoid" or self.cfg.top_k > 1:
            weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-9)
        return logits, probs, idx, weights


class GroupedExperts(nn.Module):
    """E SwiGLU/GELU experts stored as stacked weights [E, d, f]: one batched GEMM per
    projection, and expert parallelism shards dim 0."""

    def __init__(self, n: int, d: int, f: int, swiglu: bool, dropout: float):
        super().__init__()
        self.swiglu = swiglu
        self.w1 = nn.Parameter(torch.empty(n, d, f))
        self.w3 = nn.Parameter(torch.empty(n, d, f)) if swiglu else None
        self.w2 = nn.Parameter(torch.empty(n, f, d))
        self.drop = nn.Dropout(dropout)
        for w in (self.w1, self.w3, self.w2):
            if w is not None:
                nn.init.normal_(w, std=w.shape[1] ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [E, C, d]
        h = torch.bmm(x, self.w1)
        h = F.silu(h) * torch.bmm(x, self.w3) if self.swiglu else F.gelu(h, approximate="tanh")
        return torch.bmm(self.drop(h), self.w2)


class MoELayer(nn.Module):
    def __init__(self, bb: Backbone, cfg: MoESpec):
        super().__init__()
        self.cfg = cfg
        self.router = Router(bb.hidden, cfg)
        self.experts = GroupedExperts(cfg.experts, bb.hidden, cfg.expert_hidden or bb.d_ffn,
                                      bb.mlp == "swiglu", cfg.expert_dropout)
        shared_width = (cfg.expert_hidden or bb.d_ffn) * cfg.shared_experts
        self.shared = MLP(bb, shared_width) if cfg.shared_experts else None

    def capacity(self, tokens):
        """Slots per expert. Dropless keeps every token by giving each expert room for all of
        them (a token picks an expert at most once), at the price of over-compute."""
        e, k = self.cfg.experts, self.cfg.top_k
        if self.cfg.capacity_factor is None:
            return tokens
        cf = int(round(self.cfg.capacity_factor * _CF_SCALE))
        return -((-tokens * k * cf) // (e * _CF_SCALE))

    def forward(self, x: torch.Tensor):
        b, s, d = x.size(0), x.size(1), x.size(2)
        e, k = self.cfg.experts, self.cfg.top_k
        h = x.reshape(-1, d)
        tokens = b * s
        cap = self.capacity(tokens)
        logits, probs, idx, weights = self.router(h)

        # slot of each (token, choice) inside its expert, first-come first-served in token order
        flat = idx.reshape(-1)
        onehot = flat.new_zeros(flat.size(0), e).scatter_(1, flat.unsqueeze(1), 1)  # [T*k, E]
        pos = ((onehot.cumsum(0) - 1) * onehot).sum(-1)
        keep = pos < cap
        trash = e * cap  # one extra row receives every dropped assignment
        slot = torch.where(keep, flat * cap + pos, torch.full_like(flat, trash))

        src = h.repeat_interleave(k, dim=0)
        buf = h.new_zeros(trash + 1, d).index_add(0, slot, src)
        out = self.experts(buf[:trash].view(e, cap, d))
        out = torch.cat([out.reshape(trash, d), h.new_zeros(1, d)], dim=0)[slot]
        y = (out.view(tokens, k, d) * weights.to(x.dtype).unsqueeze(-1)).sum(1)
        if self.shared is not None:
            y = y + self.shared(h)

        load = onehot.sum(0).float()  # assignments per expert before dropping
        aux = self._aux_loss(logits, probs, load)
        dropped = 1.0 - keep.float().mean()
        return y.view(b, s, d), aux, load, dropped

    def _aux_loss(self, logits, probs, load):
        cfg = self.cfg
        aux = logits.new_zeros(())
        if cfg.balancing == "aux_loss" and cfg.aux_loss_coef > 0:
            f = load / load.sum()  # fraction of assignments per expert
            p = probs.mean(0)
            aux = aux + cfg.aux_loss_coef * cfg.experts * (f * p).sum()
        if cfg.z_loss_coef > 0:
            aux = aux + cfg.z_loss_coef * torch.logsumexp(logits, dim=-1).pow(2).mean()
        return aux


@torch.no_grad()
def update_balancing_bias(layer: MoELayer, load: torch.Tensor) -> None:
    """Aux-loss-free balancing step: raise the bias of under-loaded experts, lower it for
    over-loaded ones, by a fixed rate (the sign rule of DeepSeek-V3)."""
    if layer.cfg.balancing != "aux_free":
        return
    err = load.mean() - load
    layer.router.expert_bias.add_(layer.cfg.bias_update_rate * err.sign())
