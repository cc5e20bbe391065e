"""Local routing: a dropless MoE layer under tensor (and sequence) parallelism with etp = 1 routes
the tokens of its own sequence shard, as Megatron-Core does, instead of gathering the whole
sequence and running every expert on it on every tensor-parallel rank.

Dropless routing sends each token copy to its expert however the other tokens route, so a token's
output does not depend on which rank routes it: splitting the micro-batch over the tp ranks gives
one process's outputs exactly. (With a capacity, which copies are dropped depends on the tokens
ahead in the whole micro-batch, so capacity layers keep the gathered layout of tensor_parallel.py.)
What the layer computes from the whole micro-batch is summed over the tp ranks:

  statistics  the load per expert, the router's mean probabilities and its z-loss (the balancing
              loss reads them) and the entropy: summed forward, the gradient passed through
              unchanged (each rank's tokens get their own share of the loss's gradient);
  gradients   the router, the experts and the shared experts are replicated over tp and each rank
              saw only its tokens, so their gradients are summed over tp after backward
              (`sum_grads_over_tp`, after the data-parallel reductions, which are linear too).

Under expert parallelism (folded out of dp) each tp rank exchanges its own copies within its ep
group (the ranks of the same tp coordinate), through the dropless all-to-all. Under context
parallelism the layer's input is gathered over cp first (context_parallel.py), so the shards are
the tp ranks' alone.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from .grads import local_tensor


class _SumForward(torch.autograd.Function):
    """Sum over `group` forward; the gradient passes through unchanged (each rank's input is its
    own share of the sum, whose gradient every rank holds whole)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def routes_locally(layer: nn.Module, sequence_parallel: bool, expert_tp: bool) -> bool:
    """Whether an MoE layer under tp > 1 routes its own sequence shard (else it is gathered)."""
    return sequence_parallel and not expert_tp and getattr(layer, "dropless", False)


def route_locally(layer: nn.Module, group: dist.ProcessGroup) -> None:
    """Make `layer` (an MoELayer) sum its whole-micro-batch statistics over `group`."""
    layer.token_sum = lambda x: _SumForward.apply(x, group)
    layer.token_shards = dist.get_world_size(group)


def locally_routed_params(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of the layers that route locally, read after every wrapper has
    replaced them (FSDP, expert parallelism)."""
    return [p for m in model.modules() if getattr(m, "token_sum", None) is not None
            for p in m.parameters() if p.requires_grad]


@torch.no_grad()
def sum_grads_over_tp(params: list[nn.Parameter], group: dist.ProcessGroup) -> None:
    for p in params:
        if p.grad is not None:
            dist.all_reduce(local_tensor(p.grad), group=group)
