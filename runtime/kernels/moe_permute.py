"""MoE token permutation: group routed token copies by expert, padded for grouped GEMMs.

``permute`` copies token ``t`` once per routed expert ``expert_idx[t, j]`` into a buffer where each
expert's rows are contiguous (stable by token inside an expert) and every group is padded with zero
rows up to a multiple of ``align`` (16 by default: FP8 grouped GEMMs need 16-row aligned groups).
``unpermute`` sums the expert outputs back per token, weighted by the router weights.

The routing metadata (sort by expert, offsets) is cheap index work done with PyTorch in both
backends; the Triton kernels move the rows, which is where the memory traffic is. Both directions
are differentiable: permute in x, unpermute in the expert outputs and the router weights.

Row count: the number of rows ``R = sum_e ceil(n_e / align) * align`` depends on the routing, so
computing it needs a device-to-host sync. Pass ``out_rows >= permuted_rows_bound(T, k, E, align)``
to get a static-shaped buffer instead (no sync, CUDA-graph friendly); rows past ``R`` are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._triton import cdiv, jit, next_power_of_2

__all__ = [
    "PermuteMeta",
    "permuted_rows_bound",
    "routing_metadata",
    "permute_reference",
    "unpermute_reference",
    "permute_triton",
    "unpermute_triton",
]

tl = None  # triton.language, bound at the first kernel launch (Triton is imported lazily)


@dataclass(frozen=True)
class PermuteMeta:
    """Where every routed copy went; everything ``unpermute`` needs.

    row_map: [T, k] int64, row of the permuted buffer holding token t's copy for expert_idx[t, j].
    tokens_per_expert: [E] int64, routed copies per expert (before padding).
    padded_offsets: [E + 1] int64, start row of each expert's padded group; the last entry is R.
        ``padded_offsets[1:]`` is the cumulative group end that grouped-GEMM APIs take.
    num_rows: rows of the permuted buffer (R, or ``out_rows`` when given).
    """

    row_map: torch.Tensor
    tokens_per_expert: torch.Tensor
    padded_offsets: torch.Tensor
    num_rows: int


def permuted_rows_bound(num_tokens: int, top_k: int, num_experts: int, align: int = 16) -> int:
    """Static upper bound on R: every group wastes at most ``align - 1`` padding rows."""
    return num_tokens * top_k + num_experts * (align - 1)


def routing_metadata(
    expert_idx: torch.Tensor, num_experts: int, align: int = 16, out_rows: int | None = None
) -> PermuteMeta:
    """Compute the destination row of every (token, slot) pair; shared by both backends."""
    if expert_idx.dim() != 2:
        raise ValueError(f"expert_idx must be [T, k], got shape {tuple(expert_idx.shape)}")
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    num_tokens, top_k = expert_idx.shape
    flat = expert_idx.reshape(-1).long()
    # scatter_add instead of bincount: bincount's output length depends on the data (a sync).
    counts = torch.zeros(num_experts, dtype=torch.long, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded_offsets = F.pad(((counts + align - 1) // align * align).cumsum(0), (1, 0))
    group_starts = F.pad(counts.cumsum(0), (1, 0))[:-1]

    order = torch.argsort(flat, stable=True)  # by expert, then by (token, slot)
    sorted_expert = flat[order]
    rank_in_group = torch.arange(flat.numel(), device=flat.device) - group_starts[sorted_expert]
    row_map = torch.empty_like(flat)
    row_map[order] = padded_offsets[sorted_expert] + rank_in_group
    return PermuteMeta(
        row_map=row_map.view(num_tokens, top_k),
        tokens_per_expert=counts,
        padded_offsets=padded_offsets,
        num_rows=_num_rows(padded_offsets, num_tokens, top_k, num_experts, align, out_rows),
    )


def _num_rows(
    padded_offsets: torch.Tensor, num_tokens: int, top_k: int, num_experts: int, align: int,
    out_rows: int | None,
) -> int:
    """R from the data (syncs), or the caller's static ``out_rows`` checked against the bound."""
    if out_rows is None:
        return int(padded_offsets[-1])
    bound = permuted_rows_bound(num_tokens, top_k, num_experts, align)
    if out_rows < bound:
        raise ValueError(f"out_rows={out_rows} is below permuted_rows_bound(...)={bound}")
    return out_rows


def permute_reference(
    x: torch.Tensor,
    expert_idx: torch.Tensor,
    num_experts: int,
    align: int = 16,
    out_rows: int | None = None,
) -> tuple[torch.Tensor, PermuteMeta, torch.Tensor, torch.Tensor]:
    """PyTorch permutation: returns (x_perm [R, H], meta, tokens_per_expert, padded_offsets)."""
    meta = routing_metadata(expert_idx, num_experts, align, out_rows)
    tokens = torch.arange(x.shape[0], device=x.device).repeat_interleave(expert_idx.shape[1])
    x_perm = x.new_zeros(meta.num_rows, x.shape[1]).index_copy(0, meta.row_map.reshape(-1), x[tokens])
    return x_perm, meta, meta.tokens_per_expert, meta.padded_offsets


def unpermute_reference(
    y_perm: torch.Tensor, meta: PermuteMeta, router_weights: torch.Tensor
) -> torch.Tensor:
    """PyTorch un-permutation: y[t] = sum_j router_weights[t, j] * y_perm[row_map[t, j]]."""
    compute = torch.promote_types(y_perm.dtype, torch.float32)
    gathered = y_perm[meta.row_map].to(compute)  # [T, k, H]
    y = (gathered * router_weights.to(compute).unsqueeze(-1)).sum(dim=1)
    return y.to(y_perm.dtype)


def permute_triton(
    x: torch.Tensor,
    expert_idx: torch.Tensor,
    num_experts: int,
    align: int = 16,
    out_rows: int | None = None,
) -> tuple[torch.Tensor, PermuteMeta, torch.Tensor, torch.Tensor]:
    """Triton permutation; same contract as :func:`permute_reference`."""
    meta = routing_metadata(expert_idx, num_experts, align, out_rows)
    x_perm = _PermuteRows.apply(x, meta.row_map, meta.num_rows)
    return x_perm, meta, meta.tokens_per_expert, meta.padded_offsets


def unpermute_triton(
    y_perm: torch.Tensor, meta: PermuteMeta, router_weights: torch.Tensor
) -> torch.Tensor:
    """Triton un-permutation; same contract as :func:`unpermute_reference`."""
    return _UnpermuteRows.apply(y_perm, meta.row_map, router_weights)


class _PermuteRows(torch.autograd.Function):
    """x_perm[row_map[t, j]] = x[t]; the gradient sums each token's k copies back."""

    @staticmethod
    def forward(ctx, x, row_map, num_rows):
        ctx.save_for_backward(row_map)
        return _scatter_rows(x, row_map, num_rows)[0]

    @staticmethod
    def backward(ctx, grad_perm):
        (row_map,) = ctx.saved_tensors
        return _gather_rows(grad_perm, row_map, weights=None), None, None


class _UnpermuteRows(torch.autograd.Function):
    """y[t] = sum_j w[t, j] y_perm[row_map[t, j]].

    Backward: grad_y_perm[row_map[t, j]] = w[t, j] grad_y[t] (padding rows get zero) and
    grad_w[t, j] = <grad_y[t], y_perm[row_map[t, j]]>, both from one scatter pass.
    """

    @staticmethod
    def forward(ctx, y_perm, row_map, weights):
        ctx.save_for_backward(y_perm, row_map, weights)
        return _gather_rows(y_perm, row_map, weights)

    @staticmethod
    def backward(ctx, grad_y):
        y_perm, row_map, weights = ctx.saved_tensors
        need_grad_w = ctx.needs_input_grad[2]
        grad_perm, dots = _scatter_rows(
            grad_y, row_map, y_perm.shape[0], weights, y_perm if need_grad_w else None
        )
        grad_w = dots.view_as(weights).to(weights.dtype) if need_grad_w else None
        return grad_perm, None, grad_w


def _scatter_rows(src, row_map, num_rows, weights=None, dot_with=None):
    """out[row_map[t, j]] = weights[t, j] * src[t] into a zeroed [num_rows, H] buffer.

    Returns (out, dots) where dots[t * k + j] = <src[t], dot_with[row_map[t, j]]> in fp32
    when ``dot_with`` is given (zeros otherwise).
    """
    src = src.contiguous()
    hidden = src.shape[1]
    copies = row_map.numel()
    out = src.new_zeros(num_rows, hidden)
    dots = torch.zeros(copies, dtype=torch.float32, device=src.device)
    if copies and hidden:
        _scatter_rows_kernel[(copies,)](
            src, out, row_map.contiguous(),
            src if weights is None else weights.contiguous(),  # placeholders are never read
            out if dot_with is None else dot_with.contiguous(),
            dots, hidden, row_map.shape[1],
            HAS_WEIGHT=weights is not None, WITH_DOT=dot_with is not None,
            BLOCK_H=min(next_power_of_2(hidden), 1024),
        )
    return out, dots


def _gather_rows(src, row_map, weights):
    """out[t] = sum_j weights[t, j] * src[row_map[t, j]] (weights of 1 when None), fp32 sums."""
    src = src.contiguous()
    num_tokens, top_k = row_map.shape
    hidden = src.shape[1]
    out = src.new_empty(num_tokens, hidden)
    if num_tokens and hidden:
        block_h = min(next_power_of_2(hidden), 1024)
        _gather_rows_kernel[(num_tokens, cdiv(hidden, block_h))](
            src, out, row_map.contiguous(),
            src if weights is None else weights.contiguous(),  # a placeholder is never read
            hidden, TOP_K=top_k, HAS_WEIGHT=weights is not None, BLOCK_H=block_h,
        )
    return out


@jit
def _scatter_rows_kernel(
    src_ptr, out_ptr, row_map_ptr, weight_ptr, other_ptr, dot_ptr, hidden, top_k,
    HAS_WEIGHT: tl.constexpr, WITH_DOT: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """One program per routed copy i = t * k + j; loops over the hidden dim so the dot is local."""
    copy = tl.program_id(0).to(tl.int64)
    src_row = src_ptr + (copy // top_k) * hidden
    dest = tl.load(row_map_ptr + copy)
    scale = 1.0
    if HAS_WEIGHT:
        scale = tl.load(weight_ptr + copy).to(tl.float32)
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for start in range(0, hidden, BLOCK_H):
        cols = start + tl.arange(0, BLOCK_H)
        mask = cols < hidden
        v = tl.load(src_row + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + dest * hidden + cols, (v * scale).to(out_ptr.dtype.element_ty), mask=mask)
        if WITH_DOT:
            o = tl.load(other_ptr + dest * hidden + cols, mask=mask, other=0.0).to(tl.float32)
            acc += v * o
    if WITH_DOT:
        tl.store(dot_ptr + copy, tl.sum(acc, axis=0))


@jit
def _gather_rows_kernel(
    src_ptr, out_ptr, row_map_ptr, weight_ptr, hidden,
    TOP_K: tl.constexpr, HAS_WEIGHT: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """One program per (token, hidden block): sums the token's k rows in fp32, no atomics."""
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < hidden
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        row = tl.load(row_map_ptr + token * TOP_K + j)
        v = tl.load(src_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_WEIGHT:
            v = v * tl.load(weight_ptr + token * TOP_K + j).to(tl.float32)
        acc += v
    tl.store(out_ptr + token * hidden + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)
