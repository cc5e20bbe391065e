"""Local routing: an MoE layer routes the tokens its rank holds, as Megatron-Core does, instead of
gathering the whole micro-batch and running every expert on it on every rank that holds a part of
it, wherever its experts are whole (etp = 1): under tensor parallelism with sequence parallelism
(each tp rank holds a sequence shard) and under context parallelism (each cp rank holds its chunks
of the sequence). The rule is vlac.compiler.moe_routing's, which the cost model reads too.

Dropless routing sends each token copy to its expert however the other tokens route, so a token's
output does not depend on which rank routes it: splitting the micro-batch gives one process's
outputs exactly. With a capacity, which copies are dropped depends on the copies ahead in the whole
micro-batch's token order (row by row, each row's sequence in order): the ranks that split it
all-gather their per-(row, piece of the row, expert) copy counts (a few integers), so each numbers
its own copies as one process would whichever pieces of the rows it holds (cp's chunks are not
consecutive: moe_local_routing_order.py), keeps those within capacity and runs them through the
dropless path (MoELayer._shard_capacity_dispatch). What the layer computes from the
whole micro-batch is summed over the ranks that split it:

  statistics  the load per expert, the router's mean probabilities and its z-loss (the balancing
              loss reads them) and the entropy: summed forward over tp, then over cp. Backward,
              the tp sum passes the gradient through unchanged (the tp ranks compute one loss
              between them: each rank's tokens get their own share of its gradient); the cp sum
              sums it over cp, since every cp rank computes the whole loss and cp's gradients are
              those of the sum of the cp ranks' losses (context_parallel.py), as the cp gather's
              reduce-scatter does for the activations;
  gradients   the router, the experts and the shared experts are replicated over tp and each rank
              saw only its tokens, so their gradients are summed over tp after backward
              (`sum_grads_over_tp`, after the data-parallel reductions, which are linear too).
              Over cp nothing more is needed: every parameter's gradient is summed over cp and
              divided by cp already (`average_grads_over_cp`), which is the exact gradient for a
              parameter that saw only this rank's tokens as for one that saw all of them.

Under expert parallelism each rank exchanges its own copies within its ep group, through the
dropless all-to-all; ep folds over the dp, cp and (under sp) tp ranks alike,
since all of them hold distinct tokens (mesh.py), and the experts' gradients are then reduced over
those ranks at once (expert_parallel.py), not by the tp sum and cp average here.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from vlac.compiler.moe_routing import routes_own_shard, routes_own_tokens

from .moe_local_routing_order import CopyOrder

from .grads import local_tensor


class _SumForward(torch.autograd.Function):
    """Sum over `group` forward. Backward, the gradient passes through unchanged (`sum_backward`
    False: each rank's input is its own share of the sum, whose gradient every rank holds whole)
    or is summed over `group` too (True: the ranks' losses add up, see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup, sum_backward: bool) -> torch.Tensor:
        ctx.group, ctx.sum_backward = group, sum_backward
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.sum_backward:
            grad = grad.contiguous().clone()
            dist.all_reduce(grad, group=ctx.group)
        return grad, None, None


def routes_locally(layer: nn.Module, sequence_parallel: bool, expert_tp: bool) -> bool:
    """Whether an MoE layer under tp > 1 routes its own sequence shard, dropless or with a capacity
    (else it is gathered, or replicated without sp).
    `expert_tp`: its experts are split by width over the tp group (etp = tp > 1)."""
    return bool(routes_own_shard(1 + expert_tp, sequence_parallel))


def routes_over_cp(expert_tp: bool) -> bool:
    """Whether an MoE layer under cp > 1 routes this cp rank's tokens (else it is gathered)."""
    return bool(routes_own_tokens(1 + expert_tp))


def route_locally(layer: nn.Module, group: dist.ProcessGroup, over: str = "tp",
                  cut: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None) -> None:
    """Make `layer` (an MoELayer) sum its whole-micro-batch statistics over `group` as well, the
    ranks of its `over` dimension ("tp" or "cp"), which split its tokens. `cut(positions, size,
    rank)`: the positions of a row that rank `rank` of the `size` ranks keeps of `positions` (the
    ones it is given; tp: consecutive equal shards, the default)."""
    steps = getattr(layer, "token_groups", None)
    if steps is None:
        steps = layer.token_groups = []

        def token_sum(x: torch.Tensor) -> torch.Tensor:
            for g, dim in steps:  # the order they were added in, the same on every rank
                x = _SumForward.apply(x, g, dim == "cp")
            return x
        layer.token_sum = token_sum
    steps.append((group, over))
    layer.token_shards *= dist.get_world_size(group)
    if not getattr(layer, "dropless", False):  # a capacity: the slots count the whole micro-batch's copies
        if layer.copy_offsets is None:
            layer.copy_offsets = CopyOrder()
        layer.copy_offsets.add(over, dist.get_world_size(group), dist.get_rank(group), cut or _consecutive,
                               lambda counts, g=group: _gather(counts, g))


def _consecutive(positions: torch.Tensor, size: int, rank: int) -> torch.Tensor:
    return positions.chunk(size)[rank]


def _gather(counts: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Every rank's `counts` stacked in rank order. Integer counts: no gradient."""
    out = [torch.empty_like(counts) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, counts.contiguous(), group=group)
    return torch.stack(out)


def locally_routed_params(model: nn.Module, over: str = "tp") -> list[nn.Parameter]:
    """The trainable parameters of the layers that route their own tokens over the `over`
    dimension, read after every wrapper has replaced them (FSDP, expert parallelism)."""
    return [p for m in model.modules() if any(dim == over for _, dim in getattr(m, "token_groups", ()))
            for p in m.parameters() if p.requires_grad]


@torch.no_grad()
def sum_grads_over_tp(params: list[nn.Parameter], group: dist.ProcessGroup) -> None:
    for p in params:
        if p.grad is not None:
            dist.all_reduce(local_tensor(p.grad), group=group)
