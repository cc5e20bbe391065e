"""Mixture of experts: fp32 router, capacity-factor dispatch with static shapes, and a dropless
mode.

Capacity dispatch: every tensor shape follows from the input shape and the config, never from
routing decisions, so the layer traces with torch.fx, propagates on meta tensors, counts FLOPs
exactly (capacity over-compute included) and splits into pipeline stages. Integer arithmetic on
the token count is written with // so that, under symbolic tracing, it is recorded in the graph.

Dropless (`moe.capacity_factor: null`): each token copy goes to its expert, however uneven the
load. The expert groups then have data-dependent sizes, so the dispatch is one FX leaf,
`dropless_experts` (registered with torch.fx.wrap): inputs h [T, d], expert ids [T, k], router
weights [T, k] and the stacked expert weights; output [T, d]. Inside it the permutation runs
through `vlac.runtime.kernels.moe_permute` / `moe_unpermute` with backend "auto" (Triton on CUDA,
PyTorch elsewhere) and the expert GEMMs through `torch._grouped_mm`. Its cost is
`dropless_expert_flops`; on meta tensors it returns the known output shape without computing.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from vlac.spec.architecture import MoE as MoESpec, Backbone

from . import kernels
from .layers import MLP

_CF_SCALE = 1000  # capacity factor as an integer ratio keeps capacity an exact integer op
PERMUTE_ALIGN = 16  # rows per expert group padded to 16: what FP8/bf16 grouped GEMMs need


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
        # None: torch.bmm in the compute dtype. A ModuleDict of per-projection FP8 GEMMs when the
        # plan runs these GEMMs in FP8 (set from outside by vlac.runtime.fp8_experts)
        self.fp8: nn.ModuleDict | None = None
        # None: `dropless_experts`. Under expert parallelism a function of the same signature that
        # exchanges the routed copies (set from outside by vlac.runtime.parallel.expert_parallel)
        self.dropless_dispatch = None

    def _gemm(self, projection: str):
        return torch.bmm if self.fp8 is None else self.fp8[projection]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [E, C, d]
        h = self._gemm("w1")(x, self.w1)
        h = F.silu(h) * self._gemm("w3")(x, self.w3) if self.swiglu else F.gelu(h, approximate="tanh")
        return self._gemm("w2")(self.drop(h), self.w2)

    def dropless(self, h: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Every routed copy of h [T, d] through its expert (idx, weights [T, k]), no capacity. A
        method of the experts module, so that sharded data parallelism can gather the weights
        around it as it does around forward."""
        fp8 = {} if self.fp8 is None else {"fp8": self.fp8}  # traced graphs keep the plain signature
        dispatch = dropless_experts if self.dropless_dispatch is None else self.dropless_dispatch
        return dispatch(h, idx, weights, self.w1, self.w3, self.w2, self.drop.p, self.training, **fp8)


def dropless_experts(h: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor, w1: torch.Tensor,
                     w3: torch.Tensor | None, w2: torch.Tensor, dropout: float, training: bool,
                     fp8: nn.ModuleDict | None = None) -> torch.Tensor:
    """Every routed copy through its expert, no capacity limit: permute by expert (padded groups),
    grouped GEMMs (`fp8`: the experts' FP8 GEMMs, see GroupedExperts), un-permute with the router
    weights. An FX leaf (see the module docstring)."""
    if h.device.type == "meta":  # known shape; the compiler costs it with dropless_expert_flops
        return torch.empty_like(h).requires_grad_(h.requires_grad or w1.requires_grad)
    n_experts = w1.size(0)
    x_perm, meta, _, offsets = kernels.moe_permute(h, idx, n_experts, align=PERMUTE_ALIGN)
    ends = offsets[1:].to(torch.int32)
    gemm = (lambda _: _grouped_mm) if fp8 is None else fp8.__getitem__
    a = gemm("w1")(x_perm, w1, ends)
    a = F.silu(a) * gemm("w3")(x_perm, w3, ends) if w3 is not None else F.gelu(a, approximate="tanh")
    a = F.dropout(a, dropout, training)
    y_perm = gemm("w2")(a, w2, ends)
    return kernels.moe_unpermute(y_perm, meta, weights.to(y_perm.dtype))


def _grouped_mm(x: torch.Tensor, w: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Rows ends[e-1]:ends[e] of x times w[e]. torch._grouped_mm where this build and device take
    it (CPU; CUDA with bf16 on sm90+ and 16-byte aligned rows), else a loop over the groups (one
    host sync)."""
    w = w.to(x.dtype)  # under autocast the stored weights may be fp32 while x is bf16
    if x.device.type == "cpu" or (x.dtype == torch.bfloat16 and x.size(1) % 8 == 0 and w.size(-1) % 8 == 0
                                  and torch.cuda.get_device_capability(x.device)[0] >= 9):
        return torch._grouped_mm(x, w, offs=ends)
    out, start = x.new_zeros(x.size(0), w.size(-1)), 0
    for e, end in enumerate(ends.tolist()):
        out[start:end] = x[start:end] @ w[e]
        start = end
    return out


torch.fx.wrap("dropless_experts")


def dropless_expert_flops(tokens: int, top_k: int, hidden: int, ffn: int, swiglu: bool) -> int:
    """Forward FLOPs of `dropless_experts` (the padding rows of each group excluded)."""
    return 2 * tokens * top_k * hidden * ffn * (3 if swiglu else 2)


class MoELayer(nn.Module):
    """Routed experts (+ shared experts). forward(x) -> (y, aux, load, dropped): aux is the
    balancing + z-loss (scalar), load the assignments per expert before dropping [E], dropped the
    fraction of assignments that overflowed capacity. The mean router entropy of the last forward
    is kept in the `router_entropy` buffer (a diagnostic outside the fixed return contract)."""

    def __init__(self, bb: Backbone, cfg: MoESpec):
        super().__init__()
        self.cfg = cfg
        self.dropless = cfg.capacity_factor is None
        self.router = Router(bb.hidden, cfg)
        self.experts = GroupedExperts(cfg.experts, bb.hidden, cfg.expert_hidden or bb.d_ffn,
                                      bb.mlp == "swiglu", cfg.expert_dropout)
        shared_width = (cfg.expert_hidden or bb.d_ffn) * cfg.shared_experts
        self.shared = MLP(bb, shared_width) if cfg.shared_experts else None
        self.register_buffer("router_entropy", torch.zeros(()), persistent=False)
        # Set from outside when the layer's tokens are split over ranks that route their own
        # (dropless layers under context parallelism, or tensor parallelism with sequence
        # parallelism; runtime/parallel/moe_local_routing.py): sums a per-rank statistic over
        # those ranks, so the balancing loss, the load and the entropy are those of the whole
        # micro-batch. `token_shards`: how many equal shards.
        self.token_sum = None
        self.token_shards = 1
        # Set from outside when a layer with a capacity routes its own tokens (context parallelism,
        # tensor parallelism with sequence parallelism; moe_local_routing_order.CopyOrder): from
        # this rank's copies one-hot [b, s*k, E] and top_k, what to add to their running count to
        # give their places in the whole micro-batch's first-come order, exchanging copy counts
        # with the other ranks; its `ranks`: how many ranks split the micro-batch.
        self.copy_offsets = None

    def capacity(self, tokens):
        """Slots per expert: ceil(tokens * top_k / experts * capacity_factor)."""
        e, k = self.cfg.experts, self.cfg.top_k
        cf = int(round((self.cfg.capacity_factor or 1.0) * _CF_SCALE))
        return -((-tokens * k * cf) // (e * _CF_SCALE))

    def forward(self, x: torch.Tensor):
        b, s, d = x.size(0), x.size(1), x.size(2)
        h = x.reshape(-1, d)
        logits, probs, idx, weights = self.router(h)
        flat = idx.reshape(-1)
        load = self._over_shards(flat.new_zeros(self.cfg.experts, dtype=torch.float32).scatter_add_(
            0, flat, torch.ones_like(flat, dtype=torch.float32)))  # assignments per expert before dropping
        if self.dropless:
            y = self.experts.dropless(h, idx, weights)
            dropped = load.new_zeros(())
        elif self.copy_offsets is not None:
            y, dropped = self._shard_capacity_dispatch(h, idx, weights, b)
        else:
            y, dropped = self._capacity_dispatch(h, flat, weights)
        if self.shared is not None:
            y = y + self.shared(h)
        entropy = router_entropy(probs.detach(), self.cfg.router)
        self.router_entropy.copy_(self._over_shards(entropy) / self.token_shards)
        aux = self._aux_loss(logits, probs, load)
        return y.view(b, s, d), aux, load, dropped

    def _over_shards(self, x: torch.Tensor) -> torch.Tensor:
        """`x` summed over the ranks that share this layer's micro-batch (itself in one process)."""
        return x if self.token_sum is None else self.token_sum(x)

    def _capacity_dispatch(self, h: torch.Tensor, flat: torch.Tensor, weights: torch.Tensor):
        """Slot of each (token, choice) inside its expert, first come first served in token order;
        assignments past capacity go to one trash row and contribute zero."""
        e, k, d = self.cfg.experts, self.cfg.top_k, h.size(1)
        tokens = h.size(0)
        cap = self.capacity(tokens)
        onehot = flat.new_zeros(flat.size(0), e).scatter_(1, flat.unsqueeze(1), 1)  # [T*k, E]
        pos = ((onehot.cumsum(0) - 1) * onehot).sum(-1)
        keep = pos < cap
        trash = e * cap
        slot = torch.where(keep, flat * cap + pos, torch.full_like(flat, trash))
        src = h.repeat_interleave(k, dim=0)
        buf = h.new_zeros(trash + 1, d).index_add(0, slot, src)
        out = self.experts(buf[:trash].view(e, cap, d))
        out = torch.cat([out.reshape(trash, d), h.new_zeros(1, d)], dim=0)[slot]
        y = (out.view(tokens, k, d) * weights.to(h.dtype).unsqueeze(-1)).sum(1)
        return y, 1.0 - keep.float().mean()

    def _shard_capacity_dispatch(self, h: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor, rows: int):
        """`_capacity_dispatch` of this rank's tokens of each of the `rows` rows: a copy's slot counts
        the copies to its expert ahead of it in the whole micro-batch's token order (the rows
        before its own, then the positions before its own in its row, whichever rank holds them:
        `copy_offsets`), so exactly the copies one process keeps are kept; they run through the
        dropless path."""
        e, k, d = self.cfg.experts, self.cfg.top_k, h.size(1)
        flat = idx.reshape(-1)
        onehot = flat.new_zeros(flat.size(0), e).scatter_(1, flat.unsqueeze(1), 1).view(rows, -1, e)
        offsets = self.copy_offsets(onehot, k)  # [b, s*k, E]
        pos = ((onehot.cumsum(1) - 1 + offsets) * onehot).sum(-1).reshape(-1)
        ranks = self.copy_offsets.ranks
        keep = pos < self.capacity(h.size(0) * ranks)
        kept = keep.nonzero().squeeze(1)
        out = self.experts.dropless(h[kept // k], flat[kept].unsqueeze(1),  # copy c is token c // k
                                    weights.reshape(-1)[kept].unsqueeze(1))
        y = h.new_zeros(flat.size(0), d).index_add(0, kept, out.to(h.dtype)).view(-1, k, d).sum(1)
        dropped = self._over_shards((~keep).float().sum()) / (flat.size(0) * ranks)
        return y, dropped

    def _aux_loss(self, logits, probs, load):
        """Switch load balancing E * sum_i f_i * P_i (f: fraction of assignments, P: mean router
        probability; minimal, = 1, at uniform load) plus the router z-loss mean(logsumexp^2)."""
        cfg = self.cfg
        aux = logits.new_zeros(())
        tokens = probs.size(0) * self.token_shards  # of the whole micro-batch (`load` is too)
        if cfg.balancing == "aux_loss" and cfg.aux_loss_coef > 0:
            f = load / load.sum()
            p = self._over_shards(probs.sum(0)) / tokens
            aux = aux + cfg.aux_loss_coef * cfg.experts * (f * p).sum()
        if cfg.z_loss_coef > 0:
            aux = aux + cfg.z_loss_coef * self._over_shards(torch.logsumexp(logits, dim=-1).pow(2).sum()) / tokens
        return aux


def router_entropy(probs: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean per-token entropy (nats) of the router distribution: of the softmax over experts, or
    the summed Bernoulli entropies of independent sigmoid scores. log(E) for a softmax router
    that has not learned to prefer any expert."""
    p = probs.clamp_min(1e-9)
    if kind == "softmax":
        return -(probs * p.log()).sum(-1).mean()
    q = (1 - probs).clamp_min(1e-9)
    return -(probs * p.log() + (1 - probs) * q.log()).sum(-1).mean()


@torch.no_grad()
def update_balancing_bias(layer: MoELayer, load: torch.Tensor) -> None:
    """Aux-loss-free balancing step: raise the bias of under-loaded experts, lower it for
    over-loaded ones, by a fixed rate (the sign rule of DeepSeek-V3)."""
    if layer.cfg.balancing != "aux_free":
        return
    err = load.mean() - load
    layer.router.expert_bias.add_(layer.cfg.bias_update_rate * err.sign())
