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
capacity is static) keep the collective a plain all_to_all_single. Dropless layers (no capacity,
so no slots) exchange their routed copies with uneven splits instead
(runtime/parallel/expert_parallel_dropless.py).

Expert weights become DTensors sharded on dim 0 over the `ep` mesh (checkpoints reshard them to
any other layout); their gradients are summed over the `edp` ranks that hold the same experts. The
ep and edp ranks are those holding distinct tokens of the MoE layers (mesh.py): the data-parallel
ranks, and with whole experts (etp = 1), where the layers route their own tokens (dropless or with
a capacity), the context-parallel and (under sequence parallelism) the tensor-parallel ranks as
well; each then exchanges its own tokens.

With expert tensor parallelism (etp = tp, runtime/parallel/expert_tensor_parallel.py) the expert
weights are also sharded along their inner width over the `tp` mesh dimension: w1/w3 [E, d, f]
on f, w2 [E, f, d] on f. Each tp rank holds a different slice of the same experts, routes the
same (gathered) tokens and exchanges its own all-to-all within its `ep` group; the experts'
outputs are then partial sums over tp, summed by the MoE layer's output re-layout.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor

from .expert_parallel_dropless import expert_parallel_dropless
from .mesh import Mesh, ParallelDims

INNER_DIM = {"w1": 2, "w3": 2, "w2": 1}  # the inner (ffn) dimension of each stacked expert weight


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


def expert_mesh(mesh: Mesh) -> DeviceMesh | None:
    """The mesh the experts are sharded over: ("ep",), ("tp",) under expert tensor parallelism
    alone, ("ep", "tp") under both; None when the experts are replicated."""
    d = mesh.dims
    if d.ep > 1 and d.etp > 1:
        return mesh.experts["ep", "tp"]
    if d.ep > 1:
        return mesh.experts["ep"]
    if d.etp > 1:
        return mesh.sub("tp")
    return None


def _placements(mesh: DeviceMesh, pname: str) -> list:
    return [Shard(0) if dim == "ep" else Shard(INNER_DIM[pname]) for dim in mesh.mesh_dim_names]


def apply_expert_parallel(model: nn.Module, mesh: DeviceMesh) -> list[nn.Parameter]:
    """Shard the experts of every MoE layer of `model` over `mesh` (see `expert_mesh`): over its
    `ep` dimension by expert, over its `tp` dimension by inner width. Returns the parameters
    sharded by expert (the data-parallel wrappers must leave them alone); experts split over tp
    alone are DTensors like the other tensor-parallel weights, reduced by the wrappers."""
    dims = mesh.mesh_dim_names
    by_expert = "ep" in dims
    ep = mesh.size(dims.index("ep")) if by_expert else 1
    group = mesh.get_group("ep") if by_expert else None
    layout = [Shard(0) if dim == "ep" else Replicate() for dim in dims]  # of the slots [E, C, d]
    params: list[nn.Parameter] = []
    for name, layer in model.named_modules():
        if not (hasattr(layer, "router") and hasattr(layer, "experts")):
            continue
        n = layer.experts.w1.size(0)
        if n % ep:
            raise ValueError(f"moe.experts = {n} is not divisible by plan.ep = {ep}; re-plan with an ep that divides it")
        dropless = by_expert and routes_copies(layer)
        if dropless and "tp" in dims:
            raise ValueError("moe.capacity_factor: null (dropless) with plan.expert_tensor_parallel > 1 is not run; "
                             "re-plan with --pin etp=1 or set moe.capacity_factor")

        def shard(_, module: nn.Module, dm: DeviceMesh) -> None:
            for pname, param in list(module.named_parameters(recurse=False)):
                module.register_parameter(pname, nn.Parameter(distribute_tensor(param.data, dm, _placements(dm, pname)),
                                                              requires_grad=param.requires_grad))

        def input_fn(mod, inputs, dm):
            local = dispatch(inputs[0], ep, group) if by_expert else inputs[0]
            # replicated over tp: the split GEMMs' input gradient is summed over tp on the way back
            return DTensor.from_local(local, dm, layout, run_check=False)

        def output_fn(mod, out, dm):
            local = out.to_local()  # a partial sum over tp under expert tensor parallelism
            return combine(local, ep, group) if by_expert else local

        if dropless:  # no slots to exchange: the layer routes its copies through the uneven exchange
            distribute_module(layer.experts, mesh, shard)
            layer.experts.dropless_dispatch = expert_parallel_dropless(ep, group)
        else:
            distribute_module(layer.experts, mesh, shard, input_fn=input_fn, output_fn=output_fn)
        if by_expert:
            params += list(layer.experts.parameters())
    return params


def routes_copies(layer: nn.Module) -> bool:
    """Whether an MoE layer hands its experts routed copies (`GroupedExperts.dropless`) instead of
    capacity slots: dropless layers, and layers with a capacity that route their own
    tokens (they keep the copies within capacity: moe_local_routing.py)."""
    return bool(getattr(layer, "dropless", False) or getattr(layer, "copy_offsets", None) is not None)


def shard_experts_over_edp(model: nn.Module, edp_mesh: DeviceMesh, reshard_after_forward: bool) -> tuple[list, list]:
    """Sharded data parallelism (zero >= 1) for the experts: FSDP2 over the `edp` ranks that hold
    the same experts (a 2-D layout, edp x ep, like FSDP x TP). FSDP averages their gradients over
    edp, i.e. divides by edp where the other parameters' mean divides by dp: `rescale_expert_grads`
    makes up the factor ep after backward (a divide factor inside FSDP needs PREMUL_SUM, which
    gloo lacks). Returns (parameters before, parameters after sharding)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    before: list[nn.Parameter] = []
    after: list[nn.Parameter] = []
    for layer in model.modules():
        if hasattr(layer, "router") and hasattr(layer, "experts"):
            before += list(layer.experts.parameters())
            fully_shard(layer.experts, mesh=edp_mesh, reshard_after_forward=reshard_after_forward)
            if routes_copies(layer):  # the layer calls its experts through this method
                register_fsdp_forward_method(layer.experts, "dropless")
            after += list(layer.experts.parameters())
    return before, after


@torch.no_grad()
def rescale_expert_grads(params: list[nn.Parameter], factor: float) -> None:
    for p in params:
        if p.grad is not None:
            p.grad.mul_(factor)


def expert_grad_divisor(dims: ParallelDims) -> int:
    """What the sum of an expert's gradients over all the ranks holding it is divided by: dp, as
    the data-parallel mean of the other parameters, times cp when the ep x edp ranks span cp (each
    cp rank's gradient is cp times its tokens' share: context_parallel.py). The tp ranks, when
    spanned, hold distinct tokens of one loss: their shares add up as they are."""
    return dims.dp * (dims.cp if "cp" in dims.moe_token_dims else 1)


def fsdp_expert_scale(dims: ParallelDims) -> float:
    """The factor that turns FSDP's mean over the `edp` ranks into the sum over them divided by
    `expert_grad_divisor` (a divide factor inside FSDP needs PREMUL_SUM, which gloo lacks)."""
    return (dims.token_ranks // dims.ep) / expert_grad_divisor(dims)


def folded_dims(dims: ParallelDims) -> tuple[str, ...]:
    """The dims besides dp whose ranks the expert reduction sums over already: the generic tp sum
    (moe_local_routing.py) and cp average (context_parallel.py) must leave the experts alone there,
    since the ranks of those dims hold other experts."""
    return tuple(d for d in dims.moe_token_dims if d != "dp") if dims.ep > 1 else ()


@torch.no_grad()
def reduce_expert_grads(params: list[nn.Parameter], edp_group: dist.ProcessGroup | None, divisor: int) -> None:
    """Expert gradients after backward: every rank's loss reached the experts through the
    all-to-all, so a rank's local gradient is already summed over its `ep` group; sum it over the
    `edp` ranks holding the same experts, then divide by `divisor` (`expert_grad_divisor`)."""
    for p in params:
        if p.grad is None:
            continue
        g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
        if edp_group is not None:
            dist.all_reduce(g, group=edp_group)
        g.div_(divisor)
