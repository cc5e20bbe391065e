"""Process-group set-up and small collective helpers. The backend is picked at run time: NCCL on
CUDA, gloo on CPU. Applying the plan's layout is `vlac.runtime.parallel`."""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass

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


def teardown(barrier_timeout_s: float = 60.0) -> None:
    """Leave the process groups before the interpreter exits, in an order that cannot deadlock.

    Left to interpreter exit, gloo's groups are destroyed by garbage collection in any order, and a
    rank can join a gloo worker thread while holding the GIL (seen after a preempt/requeue). So: a
    barrier that gives up after `barrier_timeout_s` (a peer that already left must not hang us),
    then every sub-group (mesh dimensions, pipeline) newest first, then the default group."""
    if not dist.is_initialized():
        return
    try:
        work = dist.barrier(async_op=True)
        if not work.wait(timeout=datetime.timedelta(seconds=barrier_timeout_s)):
            raise TimeoutError
    except Exception as e:  # a missing peer: say so and tear down anyway
        print(f"vlac: rank {dist.get_rank()}: the exit barrier did not complete in {barrier_timeout_s:.0f} s "
              f"({type(e).__name__}: {e}); leaving the process groups without it", flush=True)
    default = dist.group.WORLD
    for group in reversed(_subgroups()):
        if group is not default:
            dist.destroy_process_group(group)
    dist.destroy_process_group()


def _subgroups() -> list:
    """Process groups this rank created besides the default one, in creation order."""
    world = getattr(dist.distributed_c10d, "_world", None)
    names = getattr(world, "pg_names", {}) if world is not None else {}
    return [g for g in names if g is not dist.group.WORLD]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def param_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter this rank holds (full tensors, in name order): equal digests on
    the ranks of one pipeline stage prove the replicas did not drift. Collective for DTensor
    parameters: every rank of their mesh must call it."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()
