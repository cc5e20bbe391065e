"""Data parallelism at the plan's sharding level (`zero`).

zero 0, data parallelism alone: DistributedDataParallel (bucketed all-reduce overlapped with the
  backward pass; skipped with `no_sync` on all but the last micro-batch).
zero 0 with tensor, expert or pipeline parallelism: FSDP2 over a (dp_replicate, dp_shard=1) mesh,
  i.e. HSDP with shard groups of one, which is a replicated all-reduce that composes with DTensor
  parameters and pipeline stages (DDP does neither).
zero >= 1: FSDP2 `fully_shard` per decoder block and at the root over the dp_shard mesh. zero 3
  reshards parameters after forward; zero 1 and 2 keep them gathered until backward (FSDP2 shards
  optimizer state and gradients in both cases, so zero 1 runs as zero 2).

FSDP2 averages gradients over the data-parallel ranks, as DDP does. Expert parameters under expert
parallelism are left out (their gradients are summed over the edp group by expert_parallel.py).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh

from .mesh import Mesh


def fsdp_mesh(mesh: Mesh) -> DeviceMesh:
    dims = mesh.dims
    return mesh.sub("dp_replicate", "dp_shard") if dims.zero == 0 else mesh.sub("dp_shard")


def shard_module(module: nn.Module, blocks: list[nn.Module], mesh: Mesh, ignored: set[nn.Parameter]) -> nn.Module:
    """fully_shard each block, then the rest of `module` as the root group."""
    from torch.distributed.fsdp import fully_shard

    dm = fsdp_mesh(mesh)
    reshard = mesh.dims.zero >= 3
    for block in blocks:
        fully_shard(block, mesh=dm, reshard_after_forward=reshard, ignored_params=ignored & set(block.parameters()))
    fully_shard(module, mesh=dm, reshard_after_forward=reshard, ignored_params=ignored & set(module.parameters()))
    return module


def replicate_module(module: nn.Module, device) -> nn.Module:
    """DDP for the plain data-parallel layout; its `.module` is the model itself."""
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def uses_ddp(mesh: Mesh) -> bool:
    d = mesh.dims
    return d.dp > 1 and d.zero == 0 and d.tp == 1 and d.pp == 1 and d.ep == 1 and d.cp == 1


def no_sync(module: nn.Module, last_micro: bool):
    """Skip DDP's all-reduce on all but the last micro-batch. FSDP2 reduces every backward, which
    is correct, only slower than accumulating locally."""
    if isinstance(module, nn.parallel.DistributedDataParallel) and not last_micro:
        return module.no_sync()
    return nullcontext()
