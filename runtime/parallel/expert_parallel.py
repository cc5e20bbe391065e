"""Expert parallelism: the experts of each MoE layer sharded over an `ep` group, tokens moved to
them and back with `all_to_all_single`.

The MoE layer keeps its own routing and capacity dispatch; only its `experts` module is changed,
from the outside. The layer hands its experts a static-shape buffer [E, C, d]: C slots per expert,
filled first come first served in this rank's token order, exactly as in a single process that
runs the same micro-batch (capacity is a function of the micro-batch, which every data-parallel
rank sizes alike). Expert parallelism then

  dispatch  all-to-all: the rows of experts owned by rank j go to rank j, so each rank receives
            [ep, E/ep, C, d] and runs its E/ep experts on [E/ep, ep*C, d];
  combine   the inverse all-to-all returns every slot to the rank that filled it.

Every slot keeps its position, so routing, capacity, drops and the weighted combine are those of
the single-process layer; only where each expert's GEMM runs changes. Equal split sizes (the
capacity is static) keep the collective a plain all_to_all_single.

Expert weights become DTensors sharded on dim 0 over the `ep` mesh (checkpoints reshard them to
any other layout); their gradients are summed over the `edp` ranks that hold the same experts.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard, distribute_module, distribute_tensor


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with equal splits along dim 0; its gradient is the same exchange back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad.contiguous(), group=ctx.group)
        return out, None


def dispatch(buf: torch.Tensor, ep: int, group: dist.ProcessGroup) -> torch.Tensor:
    """[E, C, d] slots of this rank -> [E/ep, ep*C, d] slots of this rank's experts."""
    e, c, d = buf.shape
    recv = _AllToAll.apply(buf, group).view(ep, e // ep, c, d)  # [source rank, local expert, slot, d]
    return recv.transpose(0, 1).reshape(e // ep, ep * c, d)


def combine(out: torch.Tensor, ep: int, group: dist.ProcessGroup) -> torch.Tensor:
    """Inverse of `dispatch`: [E/ep, ep*C, d] -> [E, C, d] in this rank's slot order."""
    el, rows, d = out.shape
    c = rows // ep
    send = out.view(el, ep, c, d).transpose(0, 1).reshape(el * ep, c, d)
    return _AllToAll.apply(send, group)


def _shard_experts(name: str, module: nn.Module, mesh: DeviceMesh) -> None:
    for pname, param in list(module.named_parameters(recurse=False)):
        module.register_parameter(pname, nn.Parameter(distribute_tensor(param.data, mesh, [Shard(0)])))


def apply_expert_parallel(model: nn.Module, ep_mesh: DeviceMesh) -> list[nn.Parameter]:
    """Shard the experts of every MoE layer of `model` over `ep_mesh`; returns the expert
    parameters (the data-parallel wrappers must leave them alone)."""
    ep = ep_mesh.size()
    group = ep_mesh.get_group()
    params: list[nn.Parameter] = []
    for name, layer in model.named_modules():
        if not (hasattr(layer, "router") and hasattr(layer, "experts")):
            continue
        if getattr(layer, "dropless", False):
            raise ValueError("moe.capacity_factor: null (dropless) routes a data-dependent number of tokens per "
                             "expert; expert parallelism here exchanges capacity slots. Set a capacity factor or "
                             "re-plan with --pin ep=1")
        n = layer.experts.w1.size(0)
        if n % ep:
            raise ValueError(f"moe.experts = {n} is not divisible by plan.ep = {ep}; re-plan with an ep that divides it")

        def input_fn(mod, inputs, mesh):
            local = dispatch(inputs[0], ep, group)
            return DTensor.from_local(local, mesh, [Shard(0)], run_check=False)

        def output_fn(mod, out, mesh):
            return combine(out.to_local(), ep, group)

        distribute_module(layer.experts, ep_mesh, _shard_experts, input_fn=input_fn, output_fn=output_fn)
        params += list(layer.experts.parameters())
    return params


def shard_experts_over_edp(model: nn.Module, edp_mesh: DeviceMesh, reshard_after_forward: bool) -> tuple[list, list]:
    """Sharded data parallelism (zero >= 1) for the experts: FSDP2 over the `edp` ranks that hold
    the same experts (a 2-D layout, edp x ep, like FSDP x TP). FSDP averages their gradients over
    edp, i.e. divides by edp where the other parameters' mean divides by dp: `rescale_expert_grads`
    makes up the factor ep after backward (a divide factor inside FSDP needs PREMUL_SUM, which
    gloo lacks). Returns (parameters before, parameters after sharding)."""
    from torch.distributed.fsdp import fully_shard

    before: list[nn.Parameter] = []
    after: list[nn.Parameter] = []
    for layer in model.modules():
        if hasattr(layer, "router") and hasattr(layer, "experts"):
            before += list(layer.experts.parameters())
            fully_shard(layer.experts, mesh=edp_mesh, reshard_after_forward=reshard_after_forward)
            after += list(layer.experts.parameters())
    return before, after


@torch.no_grad()
def rescale_expert_grads(params: list[nn.Parameter], factor: float) -> None:
    for p in params:
        if p.grad is not None:
            p.grad.mul_(factor)


@torch.no_grad()
def reduce_expert_grads(params: list[nn.Parameter], edp_group: dist.ProcessGroup | None, dp: int) -> None:
    """Expert gradients after backward: every rank's loss reached the experts through the
    all-to-all, so a rank's local gradient is already summed over its `ep` group; sum it over the
    `edp` ranks holding the same experts, then divide by dp like the data-parallel average of the
    other parameters."""
    for p in params:
        if p.grad is None:
            continue
        g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
        if edp_group is not None:
            dist.all_reduce(g, group=edp_group)
        g.div_(dp)
