"""The global gradient norm and clipping over parameters of any layout.

Parameters come as plain tensors (replicated: every rank that holds them has the same gradient)
or DTensors on different meshes (FSDP shards, tensor-parallel slices, expert shards). Each DTensor
group's norm is reduced over its own mesh; pipeline stages hold disjoint parameters, so their
squared norms add up over the pp group.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def grad_norm(params: list[torch.nn.Parameter], pp_group: dist.ProcessGroup | None) -> float:
    groups: dict[object, list[torch.Tensor]] = {}
    for p in params:
        g = p.grad
        if g is None:
            continue
        key = (g.device_mesh, g.placements) if isinstance(g, DTensor) else "plain"
        groups.setdefault(key, []).append(g)
    device = local_tensor(params[0]).device if params else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float64, device=device)
    for grads in groups.values():
        n = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        if isinstance(n, DTensor):
            n = n.full_tensor()
        total += n.double() ** 2
    if pp_group is not None:
        dist.all_reduce(total, group=pp_group)
    return math.sqrt(float(total))


@torch.no_grad()
def clip_(params: list[torch.nn.Parameter], max_norm: float, norm: float) -> None:
    """Scale gradients by max_norm / norm when the norm exceeds max_norm."""
    coef = max_norm / (norm + 1e-6)
    if coef >= 1.0 or not math.isfinite(norm):
        return
    for p in params:
        if p.grad is not None:
            p.grad.mul_(coef)


def local_tensor(p: torch.Tensor | None) -> torch.Tensor | None:
    """This rank's shard of a DTensor; any other tensor (or None) as it is."""
    return p.to_local() if isinstance(p, DTensor) else p
