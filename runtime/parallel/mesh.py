"""The process layout of a plan: parallel degrees, a named DeviceMesh, and this rank's place in it.

The world is laid out as (pp, dp_replicate, dp_shard, cp, tp), outermost to innermost, as the
plan's `mesh_order` says: tensor parallelism on adjacent ranks (inside the NVLink domain), then
context, data, and pipeline stages outermost. The plan's `dp` is either replicated (zero 0: DDP or
HSDP with a shard group of one) or sharded (zero >= 1: FSDP2).

Expert parallelism is folded over the ranks that hold distinct tokens of the MoE layers
(`moe_token_dims`): the data-parallel ranks always; with whole experts (etp = 1), where the layers
route their own tokens (vlac.compiler.moe_routing, dropless or with a capacity alike), the
context-parallel ranks and, under sequence parallelism, the tensor-parallel ranks too, as the cost
model folds it. Those ranks, flattened in mesh order, split into `edp` groups of `ep` adjacent
ranks: the expert mesh is (pp, edp, ep, *the other dims), e.g. (pp, edp, ep, cp, tp) for experts
split by width (gathered over cp and tp), (pp, edp, ep, tp) without sp and (pp, edp, ep) under sp.
The experts are sharded over an `ep` group and replicated over `edp`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import prod
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from vlac.compiler.moe_routing import routes_own_tokens, token_shards

from .activation_checkpoint import rank_full_layers

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")
SCHEDULES = ("1f1b", "interleaved_1f1b", "gpipe", "zero_bubble")


class LayoutError(RuntimeError):
    """A plan this runtime cannot run as written, or one that does not match the processes."""


@dataclass(frozen=True)
class ParallelDims:
    pp: int
    dp_replicate: int
    dp_shard: int
    cp: int
    tp: int
    ep: int
    zero: int
    sequence_parallel: bool
    schedule: str
    virtual_stages: int
    etp: int = 1
    recompute: tuple[str, ...] = ("none",)  # per pipeline rank
    # per pipeline rank, the decoder layers under partial full recompute (None: the policy on
    # every block; () for every rank); activation_checkpoint.rank_full_layers
    recompute_layers: tuple[tuple[int, ...] | None, ...] = ()
    # the dims whose ranks hold distinct tokens of the MoE layers: ep is folded over them (`with_moe`)
    moe_token_dims: tuple[str, ...] = ("dp",)

    @classmethod
    def from_plan(cls, plan: dict[str, Any]) -> "ParallelDims":
        """`plan` is plan.json (or its "plan" section)."""
        p = plan.get("plan", plan)
        sharded = p["zero"] >= 1
        return cls(pp=p["pp"], dp_replicate=1 if sharded else p["dp"], dp_shard=p["dp"] if sharded else 1,
                   cp=p["cp"], tp=p["tp"], ep=p["ep"], zero=p["zero"],
                   sequence_parallel=bool(p["sequence_parallel"]) and p["tp"] > 1,
                   schedule=p["schedule"], virtual_stages=p["virtual_stages"],
                   etp=p.get("expert_tensor_parallel", 1),
                   recompute=tuple(p.get("recompute_per_stage") or [p["recompute"]] * p["pp"]),
                   recompute_layers=rank_full_layers(p))

    def with_moe(self) -> "ParallelDims":
        """These dims for a model with MoE layers: with whole experts (etp = 1) a layer's tokens are
        split over cp, and over tp under sp (cp listed even at cp = 1 then, so that the folded dims
        stay adjacent in mesh order; moe_routing.token_shards)."""
        tp_shards, _ = token_shards(self.etp, self.tp, self.sequence_parallel, self.cp)
        dims = ("dp",) + ("cp",) * bool(routes_own_tokens(self.etp)) + ("tp",) * (tp_shards > 1)
        return replace(self, moe_token_dims=dims)

    @property
    def token_ranks(self) -> int:
        """Ranks that hold distinct tokens of the MoE layers within one pipeline stage (ep x edp)."""
        return prod(self.dp if d == "dp" else getattr(self, d) for d in self.moe_token_dims)

    @property
    def expert_mesh_dims(self) -> tuple[str, ...]:
        """(pp, edp, ep, *the mesh dims after the folded ones)."""
        last = self.moe_token_dims[-1]
        rest = MESH_DIMS[MESH_DIMS.index("dp_shard" if last == "dp" else last) + 1:]
        return ("pp", "edp", "ep", *rest)

    def full_layers(self, pp_rank: int) -> tuple[int, ...] | None:
        """The decoder layers pipeline rank `pp_rank` recomputes in full; None: its policy on
        every block."""
        return self.recompute_layers[pp_rank] if self.recompute_layers else None

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def world(self) -> int:
        return self.pp * self.dp * self.cp * self.tp

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.pp, self.dp_replicate, self.dp_shard, self.cp, self.tp)

    def summary(self) -> str:
        parts = [f"{name} {size}" for name, size in zip(MESH_DIMS, self.shape) if size > 1]
        if self.ep > 1:
            parts.append(f"ep {self.ep} (within {' x '.join(self.moe_token_dims)})")
        return " x ".join(parts) or "single process"

    def check(self, world: int) -> None:
        """Fail before any work when the processes or the plan do not fit this runtime; every
        message names the plan field and how to fix it."""
        if self.world != world:
            raise LayoutError(
                f"plan.json needs {self.world} processes (pp {self.pp} x dp {self.dp} x cp {self.cp} x tp {self.tp}) "
                f"but {world} were started; submit with {self.world} tasks, or re-plan for {world} GPUs "
                f"(vlac emit ... --pin dp=...,tp=...,pp=...)")
        if self.etp not in (1, self.tp):
            raise LayoutError(f"plan.expert_tensor_parallel = {self.etp} with plan.tp = {self.tp}: this runtime "
                              f"splits experts over the whole tensor-parallel group or not at all; re-plan with "
                              f"--pin etp=1 or etp={self.tp}")
        if len(self.recompute) != self.pp:
            raise LayoutError(f"plan.recompute_per_stage lists {len(self.recompute)} policies for pp = {self.pp} "
                              f"pipeline ranks; re-emit the program")
        if self.recompute_layers and (len(self.recompute_layers) != self.pp or any(
                ids is not None and pol != "full" for pol, ids in zip(self.recompute, self.recompute_layers))):
            raise LayoutError(f"plan.recompute_full_layers {list(self.recompute_layers)} does not give pp = {self.pp} "
                              f"ranks layers only where their policy ({list(self.recompute)}) is `full`; re-emit "
                              f"the program")
        if self.ep > 1 and self.moe_token_dims == ("dp",) and self.dp % self.ep:
            raise LayoutError(f"plan.ep = {self.ep} must divide plan.dp = {self.dp}: expert parallelism is folded "
                              f"out of the data-parallel ranks (experts split by width, plan.expert_tensor_parallel "
                              f"= {self.etp}); re-plan with --pin ep=<a divisor of dp>, or --pin etp=1")
        if self.ep > 1 and self.token_ranks % self.ep:
            names = " x ".join(f"{d} {self.dp if d == 'dp' else getattr(self, d)}" for d in self.moe_token_dims)
            raise LayoutError(f"plan.ep = {self.ep} must divide the {self.token_ranks} ranks that hold distinct "
                              f"tokens of the MoE layers ({names}; tp counts under sequence parallelism): "
                              f"expert parallelism is folded over them; re-plan with --pin ep=<a divisor of "
                              f"{self.token_ranks}>")
        if self.pp > 1 and self.schedule not in SCHEDULES:
            raise LayoutError(f"plan.schedule = {self.schedule!r} is not run by this runtime; choose one of "
                              f"{', '.join(SCHEDULES)} (--pin schedule=1f1b)")
        if self.pp > 1 and (self.virtual_stages > 1) != (self.schedule == "interleaved_1f1b"):
            raise LayoutError(f"plan.virtual_stages = {self.virtual_stages} with plan.schedule = {self.schedule!r}: "
                              f"only interleaved_1f1b uses more than one stage per rank")


@dataclass
class Mesh:
    """The world mesh (None for a single process) and the expert mesh (None without EP)."""

    dims: ParallelDims
    world: DeviceMesh | None
    experts: DeviceMesh | None

    def _coord(self, name: str) -> int:
        if self.world is None:
            return 0
        return self.world.get_local_rank(name)

    @property
    def pp_rank(self) -> int:
        return self._coord("pp")

    @property
    def tp_rank(self) -> int:
        return self._coord("tp")

    @property
    def cp_rank(self) -> int:
        return self._coord("cp")

    @property
    def dp_rank(self) -> int:
        """Index among the data-parallel replicas: which slice of the global batch this rank reads."""
        return self._coord("dp_replicate") * self.dims.dp_shard + self._coord("dp_shard")

    def size(self, name: str) -> int:
        return self.dims.shape[MESH_DIMS.index(name)]

    def sub(self, *names: str) -> DeviceMesh:
        """The sub-mesh over `names` of the world mesh (multi-process runs only)."""
        assert self.world is not None, "a single process has no device mesh"
        return self.world[names[0]] if len(names) == 1 else self.world[names]

    def group(self, name: str) -> dist.ProcessGroup | None:
        """Process group of one world-mesh dimension, None when it has a single rank."""
        if self.world is None or self.size(name) == 1:
            return None
        return self.world.get_group(name)

    @property
    def ep_mesh(self) -> DeviceMesh | None:
        return None if self.experts is None else self.experts["ep"]

    @property
    def edp_group(self) -> dist.ProcessGroup | None:
        """Ranks that hold the same experts (and see different data): expert gradients are summed here."""
        if self.experts is None or self.dims.token_ranks // self.dims.ep == 1:
            return None
        return self.experts.get_group("edp")


def build_mesh(dims: ParallelDims, device_type: str) -> Mesh:
    """Every rank calls this with the same plan (it creates process groups)."""
    if dims.world == 1:
        return Mesh(dims, None, None)
    if not dist.is_initialized():
        raise LayoutError(f"the plan needs {dims.world} processes but torch.distributed is not initialised; "
                          f"call vlac.runtime.distributed.setup() first")
    world = init_device_mesh(device_type, dims.shape, mesh_dim_names=MESH_DIMS)
    experts = None
    if dims.ep > 1:
        # same ranks, the folded dims' coordinates (adjacent in mesh order) flattened and split into
        # (edp, ep) with ep innermost (adjacent ranks); the dims after them kept
        names = dims.expert_mesh_dims
        rest = [dims.shape[MESH_DIMS.index(d)] for d in names[3:]]
        ranks = torch.arange(dims.world).view(dims.pp, dims.token_ranks // dims.ep, dims.ep, *rest)
        experts = DeviceMesh(device_type, ranks, mesh_dim_names=names)
    return Mesh(dims, world, experts)
