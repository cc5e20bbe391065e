"""Expert tensor parallelism (plan.expert_tensor_parallel = etp = tp): the MoE layers' experts
split along their inner width over the tensor-parallel ranks, like a dense MLP.

Under tensor parallelism an MoE layer already sees the whole sequence on every tp rank (its input
is gathered under sequence parallelism), and its router runs replicated on it, so every rank
routes the same tokens to the same slots. With etp each rank then computes

  experts  w1/w3 [E, d, f/tp] and w2 [E, f/tp, d] (DTensor Shard on the inner width; the expert
           weights are sharded in expert_parallel.py, together with the expert dimension under
           expert parallelism): a partial sum of every expert's output;
  shared   the shared experts' MLP split like a dense one, its w2 leaving a partial sum too;

and the layer's output, a partial sum over tp, is summed once: reduce-scattered to this rank's
sequence shard under sequence parallelism, all-reduced otherwise.

Backward: the inputs of the split GEMMs are replicated DTensors, so the gradient reaching the
layer's input is summed over tp there (as in Megatron's column-parallel input) and is whole and
identical on every rank, as is the router's. The one exception is the routing weights: they
multiply the experts' partial outputs, so their gradient is a partial sum over tp, all-reduced
(one [tokens, top_k] tensor) before it reaches the router.

Cost: besides the output's reduce-scatter and the input's all-gather, backward all-reduces the
experts' input gradient ([E, C, d] slots) and the shared experts' ([tokens, d]). Megatron instead
routes on the sequence shard and gathers tokens and routing weights, so one reduce-scatter
covers all three; that needs the router to run inside the layer on a shard (a change to moe.py).

Dropless MoE layers are refused: they call the grouped GEMM on the expert weights directly,
outside the experts module whose inputs and outputs are laid out here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Partial, Replicate, Shard
from torch.distributed.tensor.parallel import ParallelStyle

from .tensor_parallel import SEQ, _Relayout, colwise, rowwise

ROUTING_WEIGHTS = 3  # (logits, probs, idx, weights) = Router.forward(h)


class _SumGrad(torch.autograd.Function):
    """Identity forward; backward sums the gradient over `group`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _RoutingWeightsGrad(ParallelStyle):
    """Sum the gradient of the router's mixing weights over tp (they scale partial outputs)."""

    def _apply(self, module: nn.Module, mesh: DeviceMesh) -> nn.Module:
        group = mesh.get_group()

        def post(_, __, out):
            out = list(out)
            out[ROUTING_WEIGHTS] = _SumGrad.apply(out[ROUTING_WEIGHTS], group)
            return tuple(out)
        module.register_forward_hook(post)
        return module


def moe_plan(root: nn.Module, prefix: str, sequence_parallel: bool) -> dict[str, ParallelStyle]:
    """The tensor-parallel plan of an MoE layer at `prefix` inside `root` with etp = tp (the
    experts' weights are sharded by expert_parallel.apply_expert_parallel)."""
    layer = root.get_submodule(prefix)
    if getattr(layer, "dropless", False):
        raise ValueError("moe.capacity_factor: null (dropless) with plan.expert_tensor_parallel > 1: the dropless "
                         "path runs the grouped GEMMs on the expert weights outside the experts module, which "
                         "this runtime splits; set a capacity factor or re-plan with --pin etp=1")
    out = Shard(SEQ) if sequence_parallel else Replicate()
    src = Shard(SEQ) if sequence_parallel else Replicate()
    plan: dict[str, ParallelStyle] = {
        prefix: _Relayout(input=(src, Replicate()), local_input=True, output=(Partial(), out)),
        f"{prefix}.router": _RoutingWeightsGrad(),
    }
    shared = layer.shared
    if shared is not None:
        plan[f"{prefix}.shared.w1"] = colwise(shared.w1)
        if getattr(shared, "w3", None) is not None:
            plan[f"{prefix}.shared.w3"] = colwise(shared.w3)
        plan[f"{prefix}.shared.w2"] = rowwise(shared.w2, output_layouts=Partial())
    return plan
