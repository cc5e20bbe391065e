"""Expert parallelism for dropless MoE layers (`moe.capacity_factor: null`): every routed token
copy travels to the rank that owns its expert, however uneven the load.

Capacity dispatch (runtime/parallel/expert_parallel.py) exchanges a static [E, C, d] slot buffer;
dropless routing has no slots, so the exchange sizes follow the routing of this micro-batch:

  count     an all-to-all of the per-expert copy counts [E]: rank j learns how many rows every
            source rank sends to each of its E/ep experts (a [ep, E/ep] matrix);
  dispatch  this rank's copies, sorted by expert (hence by owner rank, experts being laid out
            rank-major), go out with `all_to_all_single` and uneven split sizes;
  compute   the received rows, ordered [source rank][local expert], are placed into padded
            per-expert groups ([local expert][source rank]) and run through the same grouped
            GEMMs as one process (`vlac.runtime.moe._grouped_mm`, or the layer's FP8 GEMMs);
  combine   the inverse exchange brings every row back to the slot it left, and the router
            weights mix each token's k copies (`moe_unpermute`), as in one process.

Each row goes through the expert one process would send it to, so outputs, the auxiliary losses
and the gradients equal the single-process layer's; only where each GEMM row runs changes. The
exchanged volume is tokens x top_k x hidden per direction, what the cost model charges for an
expert-parallel all-to-all. Expert weights are DTensors sharded on dim 0 over `ep` as under
capacity dispatch (one checkpoint layout for both); this module computes on their local shards.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import kernels
from ..moe import PERMUTE_ALIGN, _grouped_mm
from .grads import local_tensor


class _UnevenAllToAll(torch.autograd.Function):
    """all_to_all_single with per-rank split sizes; its gradient is the exchange back (splits swapped)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, send: list[int], recv: list[int], group: dist.ProcessGroup) -> torch.Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = x.new_empty(sum(recv), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad.new_empty(sum(ctx.send), *grad.shape[1:])
        dist.all_to_all_single(out, grad.contiguous(), output_split_sizes=ctx.send, input_split_sizes=ctx.recv,
                               group=ctx.group)
        return out, None, None, None


def received_counts(tokens_per_expert: torch.Tensor, ep: int, group: dist.ProcessGroup) -> torch.Tensor:
    """[ep, E/ep]: row r holds how many copies rank r sends to each expert of this rank."""
    recv = torch.empty_like(tokens_per_expert)
    dist.all_to_all_single(recv, tokens_per_expert.contiguous(), group=group)
    return recv.view(ep, -1)


def grouped_rows(recv: torch.Tensor, align: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each received row goes in the padded per-expert buffer, and the groups' ends.

    recv [ep, n]: rows arrive as blocks (source r, local expert e) in that order; in the buffer
    expert e's group holds its sources in order, each group padded to a multiple of `align` rows
    (what grouped GEMMs need). Returns (dest [rows] int64, ends [n] int32, the last one = R)."""
    ep, n = recv.shape
    per_expert = recv.sum(0)
    starts = F.pad(((per_expert + align - 1) // align * align).cumsum(0), (1, 0))  # [n + 1]
    before = recv.cumsum(0) - recv  # rows from earlier sources within each expert's group
    block_start = (starts[:-1].unsqueeze(0) + before).reshape(-1)  # [ep * n] in arrival order
    sizes = recv.reshape(-1)
    block = torch.repeat_interleave(torch.arange(ep * n, device=recv.device), sizes)
    arrival = F.pad(sizes.cumsum(0), (1, 0))[:-1]
    dest = block_start[block] + torch.arange(block.numel(), device=recv.device) - arrival[block]
    return dest, starts[1:].to(torch.int32)


def ep_dropless_experts(h: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor, w1: torch.Tensor,
                        w3: torch.Tensor | None, w2: torch.Tensor, dropout: float, training: bool,
                        fp8=None, *, ep: int, group: dist.ProcessGroup) -> torch.Tensor:
    """`vlac.runtime.moe.dropless_experts` with the experts sharded over the `ep` ranks of `group`
    (w1/w3/w2: this rank's E/ep experts, as DTensors or local tensors)."""
    w1, w3, w2 = local_tensor(w1), local_tensor(w3), local_tensor(w2)
    n_local = w1.size(0)
    n_experts = n_local * ep
    # this rank's copies sorted by expert, i.e. by owner rank (no padding: the groups travel as is)
    x_sorted, meta, per_expert, _ = kernels.moe_permute(h, idx, n_experts, align=1)
    recv = received_counts(per_expert, ep, group)
    send_split = per_expert.view(ep, n_local).sum(1).tolist()
    recv_split = recv.sum(1).tolist()
    x_recv = _UnevenAllToAll.apply(x_sorted, send_split, recv_split, group)

    dest, ends = grouped_rows(recv, PERMUTE_ALIGN)
    rows = int(ends[-1]) if ends.numel() else 0
    x_grouped = x_recv.new_zeros(rows, x_recv.size(1)).index_copy(0, dest, x_recv)
    if fp8 is None:
        gemm = lambda _: _grouped_mm  # noqa: E731
    else:
        gemm = fp8.__getitem__
        for projection in fp8.values():  # amaxes over every rank's rows: each rank scales as one process
            projection.amax_group = group
    try:
        a = gemm("w1")(x_grouped, w1, ends)
        a = F.silu(a) * gemm("w3")(x_grouped, w3, ends) if w3 is not None else F.gelu(a, approximate="tanh")
        a = F.dropout(a, dropout, training)
        y_grouped = gemm("w2")(a, w2, ends)
    finally:
        for projection in (fp8 or {}).values():
            projection.amax_group = None
    y_sorted = _UnevenAllToAll.apply(y_grouped[dest], recv_split, send_split, group)
    return kernels.moe_unpermute(y_sorted, meta, weights.to(y_sorted.dtype))


def expert_parallel_dropless(ep: int, group: dist.ProcessGroup):
    """The dispatch a dropless MoE layer calls in place of `dropless_experts` under expert parallelism."""
    return partial(ep_dropless_experts, ep=ep, group=group)
