"""Process-group set-up and applying a plan's parallel layout to a model from the outside.

The model code knows nothing of parallelism: as in torchtitan, a parallelize function takes
the model and the plan and wraps or shards it. The backend is picked at run time: NCCL on CUDA,
gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def pick_device(local_rank: int, prefer: str = "auto") -> torch.device:
    if prefer not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {prefer!r} is not one of: auto, cpu, cuda")
    if prefer == "cuda" or (prefer == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(prefer_device: str = "auto") -> DistEnv:
    """Join the process group described by RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (set by
    torchrun, or by submitit's TorchDistributedEnvironment); a lone process needs none."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(local_rank, prefer_device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend_for(device.type), rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=10))
    return DistEnv(rank, world, local_rank, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


SUPPORTED = {"tp": 1, "pp": 1, "cp": 1, "ep": 1}


def check_layout(plan: dict[str, Any], world: int) -> None:
    """The runtime applies data parallelism (replicated or sharded) in this version; other
    degrees must be 1. Say so precisely rather than train something else than the plan."""
    p = plan["plan"]
    need = p["dp"] * p["tp"] * p["pp"] * p["cp"]
    if need != world:
        raise RuntimeError(f"the plan needs {need} processes (dp {p['dp']} x tp {p['tp']} x pp {p['pp']} x cp {p['cp']}) "
                           f"but {world} were started; submit with tasks={need} or re-plan for {world} GPUs")
    unsupported = {k: p[k] for k in SUPPORTED if p[k] != SUPPORTED[k]}
    if unsupported:
        raise RuntimeError(f"this runtime applies data parallelism (dp, zero) only; the plan asks for {unsupported}. "
                           f"Re-plan with --pin tp=1,pp=1,cp=1,ep=1")


def apply_data_parallel(model: nn.Module, plan: dict[str, Any], env: DistEnv) -> nn.Module:
    """zero 0: DistributedDataParallel (replicated). zero >= 1: FSDP2 `fully_shard` per block
    and at the root; zero 3 reshards parameters after forward, 1/2 keep them gathered."""
    p = plan["plan"]
    if env.world == 1 or p["dp"] == 1:
        return model
    if p["zero"] == 0:
        ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(env.device.type, (env.world,), mesh_dim_names=("dp",))
    reshard = p["zero"] >= 3
    for block in model.layers:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    return model


def no_sync(model: nn.Module, last_micro: bool):
    """Skip the gradient all-reduce on all but the last micro-batch (DDP); FSDP2 reduces every
    backward, which is correct, only slower."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not last_micro:
        return model.no_sync()
    return nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def param_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter (full tensors, in name order): equal digests on every rank
    prove the replicas did not drift."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(unwrap(model).named_parameters()):
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()
