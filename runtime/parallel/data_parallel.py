"""Data parallelism at the plan's sharding level (`zero`).

zero 0, data parallelism alone: DistributedDataParallel (bucketed all-reduce overlapped with the
  backward pass; skipped with `no_sync` on all but the last micro-batch).
zero 0 with tensor, expert or pipeline parallelism: FSDP2 over a (dp_replicate, dp_shard=1) mesh,
  i.e. HSDP with shard groups of one, which is a replicated all-reduce that composes with DTensor
  parameters and pipeline stages (DDP does neither).
zero >= 1: FSDP2 `fully_shard` per decoder block and at the root over the dp_shard mesh. zero 3
  reshards parameters after forward; zero 1 and 2 keep them gathered until backward (FSDP2 shards
  optimizer state and gradients in both cases, so zero 1 runs as zero 2).

FSDP2 averages gradients over the data-parallel ranks, as DDP does. Left out of FSDP: expert
parameters under expert parallelism (expert_parallel.py reduces them over their edp group) and
0-dim parameters, which FSDP cannot shard (`average_grads`).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh

from .mesh import Mesh

LOSS_HEADS = ("contrastive", "flow")  # called by Objective outside VLAModel.forward


def fsdp_mesh(mesh: Mesh) -> DeviceMesh:
    dims = mesh.dims
    return mesh.sub("dp_replicate", "dp_shard") if dims.zero == 0 else mesh.sub("dp_shard")


def shard_module(module: nn.Module, units: list[nn.Module], mesh: Mesh, ignored: set[nn.Parameter]) -> nn.Module:
    """fully_shard each of `units` (decoder blocks, loss heads), then the rest of `module` as the
    root group. A module the objective calls outside the model's forward (a loss head) must be
    its own unit: the root regathers its parameters only around the model's forward."""
    from torch.distributed.fsdp import fully_shard

    dm = fsdp_mesh(mesh)
    reshard = mesh.dims.zero >= 3
    for unit in units:
        own = set(unit.parameters()) - ignored
        if own:
            fully_shard(unit, mesh=dm, reshard_after_forward=reshard, ignored_params=ignored & set(unit.parameters()))
    fully_shard(module, mesh=dm, reshard_after_forward=reshard, ignored_params=ignored & set(module.parameters()))
    return module


def loss_heads(model: nn.Module) -> list[nn.Module]:
    """Modules of the model that the objective calls itself (after the model's forward)."""
    return [m for name in LOSS_HEADS if (m := getattr(model, name, None)) is not None]


class DDPModel(nn.Module):
    """DDP for the plain data-parallel layout. Calls go through DDP (its gradient hooks); other
    attributes (loss heads the objective calls outside forward) come from the model itself."""

    def __init__(self, module: nn.Module, device):
        super().__init__()
        ids = [device.index] if device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def forward(self, *args, **kwargs):
        return self.ddp(*args, **kwargs)

    def no_sync(self):
        return self.ddp.no_sync()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.ddp.module, name)


def replicate_module(module: nn.Module, device) -> nn.Module:
    return DDPModel(module, device)


@torch.no_grad()
def average_grads(params: list[nn.Parameter], group: dist.ProcessGroup | None, dp: int) -> None:
    for p in params:
        if p.grad is not None and group is not None:
            dist.all_reduce(p.grad, group=group)
            p.grad.div_(dp)


def uses_ddp(mesh: Mesh) -> bool:
    d = mesh.dims
    return d.dp > 1 and d.zero == 0 and d.tp == 1 and d.pp == 1 and d.ep == 1 and d.cp == 1


def no_sync(module: nn.Module, last_micro: bool):
    """Skip DDP's all-reduce on all but the last micro-batch. FSDP2 reduces every backward, which
    is correct, only slower than accumulating locally."""
    if isinstance(module, DDPModel) and not last_micro:
        return module.no_sync()
    return nullcontext()
