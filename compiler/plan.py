"""The plan: what the planner chose, what it predicts, and what it rejected and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEDULES = ("1f1b", "interleaved_1f1b", "gpipe", "zero_bubble")
RECOMPUTE_POLICIES = ("none", "selective", "full")
MESH_ORDER = ("pp", "dp", "cp", "tp")  # outermost to innermost: tp inside the NVLink domain


@dataclass(frozen=True)
class Layout:
    dp: int
    tp: int
    pp: int
    cp: int
    ep: int
    zero: int
    sequence_parallel: bool
    microbatch_size: int
    num_microbatches: int
    schedule: str
    virtual_stages: int
    recompute: str  # the most memory-saving policy of any stage (what a uniform runtime applies)
    fp8: bool
    etp: int = 1  # expert tensor parallelism (Megatron's expert_tensor_parallel_size)
    stage_recompute: tuple[str, ...] = ()  # recompute policy per pipeline rank (empty: `recompute` everywhere)
    reshard_after_forward: bool = True  # ZeRO-3 only: FSDP frees gathered weights after forward
    # per pipeline rank, the blocks recomputed in full (0 under none or selective), given only
    # where some `full` rank recomputes fewer than all of its blocks (stack.partial_recompute:
    # Megatron's --recompute-method block --recompute-num-layers); empty: all of them
    stage_recompute_layers: tuple[int, ...] = ()

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def recompute_per_stage(self) -> tuple[str, ...]:
        return self.stage_recompute or (self.recompute,) * self.pp

    def short(self) -> str:
        s = f"dp{self.dp} tp{self.tp}{'+sp' if self.sequence_parallel else ''} pp{self.pp} cp{self.cp} ep{self.ep}"
        if self.etp > 1:
            s += f" etp{self.etp}"
        rc = self.recompute_per_stage
        if self.stage_recompute_layers:  # f<k>: full on k blocks of the stage
            per_stage = [f"f{k}" if r == "full" else r[0] for r, k in zip(rc, self.stage_recompute_layers)]
            rc_text = "/".join(per_stage) if len(set(per_stage)) > 1 else f"full({self.stage_recompute_layers[0]} layers)"
        else:
            rc_text = rc[0] if len(set(rc)) == 1 else "/".join(r[0] for r in rc)  # n/s/f per stage
        s += f" zero{self.zero}{'' if self.reshard_after_forward else '-keep'} mb{self.microbatch_size}x{self.num_microbatches} {rc_text}"
        if self.pp > 1:
            s += f" {self.schedule}" + (f"(v{self.virtual_stages})" if self.virtual_stages > 1 else "")
        return s + (" fp8" if self.fp8 else "")


@dataclass(frozen=True)
class Estimate:
    """Predicted per-GPU memory (bytes) and per-step time (seconds) of one layout."""

    layout: Layout
    memory: dict[str, float]
    time: dict[str, float]
    step_time_s: float
    peak_memory: float
    fits: bool
    model_flops_per_step: float
    world: int
    peak_flops: float
    global_batch_tokens: int
    # per pipeline rank: seconds of one micro-batch (fwd, bwd incl. recompute and exposed
    # communication, wgrad = the weight-gradient share of bwd) and memory components in bytes
    stages: tuple[dict[str, Any], ...] = ()

    @property
    def tokens_per_s(self) -> float:
        return self.global_batch_tokens / self.step_time_s

    @property
    def tflops_per_gpu(self) -> float:
        return self.model_flops_per_step / self.world / self.step_time_s / 1e12

    @property
    def mfu(self) -> float:
        return self.model_flops_per_step / (self.world * self.peak_flops * self.step_time_s)


@dataclass
class Plan:
    experiment: str
    cluster: dict[str, Any]
    model: dict[str, Any]
    best: Estimate | None
    closest: Estimate | None
    alternatives: list[Estimate]
    rejected: list[dict[str, Any]]
    stage_split: list[list[int]]
    fp8: dict[str, Any]
    evaluated: int
    pruned: int
    total_steps: int
    kernels: dict[str, str] = field(default_factory=dict)
    pins: dict[str, Any] = field(default_factory=dict)
    advice: list[str] = field(default_factory=list)
    plan_seconds: float = 0.0
    search: dict[str, Any] = field(default_factory=dict)  # legal count, pruning reasons, timings
    pin_notes: list[str] = field(default_factory=list)  # why pins could not be honoured as asked
    runtime: dict[str, Any] = field(default_factory=dict)  # whether vlac's runtime runs it (planner._runtime_note)
    kernel_costs: dict[str, Any] = field(default_factory=dict)  # per kernel: measured or assumed (compiler.kernel_costs)

    @property
    def feasible(self) -> bool:
        return self.best is not None

    @property
    def chosen(self) -> Estimate:
        est = self.best or self.closest
        assert est is not None
        return est

    def to_json(self) -> dict[str, Any]:
        """The `vlac compile --json` contract: keys may be added, never renamed.

        Added by the planner issue: plan.expert_tensor_parallel, plan.recompute_per_stage (the
        policy of each pipeline rank; plan.recompute is the most memory-saving of them, what a
        runtime that applies one policy everywhere must use to fit), plan.reshard_after_forward
        (ZeRO-3 only), predicted.stages (per rank: one micro-batch's fwd/bwd/wgrad seconds and
        memory parts), predicted.placement, cluster.memory_headroom_gb, search.{legal, candidates, pruned_dominated,
        pruned_over_memory}, plan.recompute_layers_per_stage (blocks each rank recomputes in full where
        a stack with partial_recompute recomputes fewer than all; empty: every block of a `full`
        rank), fp8.off_reason / bf16_step_time_s, pin_notes; runtime.{runs, unsupported,
        excluded_layouts, excluded_total, best_excluded} (what vlac's runtime cannot run yet).
        Added by the kernels issue: kernel_costs.{file, kernels.<name>.source} (measured, assumed or
        not costed: where each runtime kernel's cost in the step time came from)."""
        est = self.chosen
        lay = est.layout
        step = est.step_time_s
        days = self.total_steps * step / 86400
        out = {
            "experiment": self.experiment,
            "feasible": self.feasible,
            "model": self.model,
            "cluster": self.cluster,
            "plan": {
                "dp": lay.dp, "tp": lay.tp, "pp": lay.pp, "ep": lay.ep, "cp": lay.cp, "zero": lay.zero,
                "microbatch_size": lay.microbatch_size, "num_microbatches": lay.num_microbatches,
                "schedule": lay.schedule if lay.pp > 1 else "none", "virtual_stages": lay.virtual_stages,
                "recompute": lay.recompute, "sequence_parallel": lay.sequence_parallel,
                "fp8": lay.fp8, "mesh_order": list(MESH_ORDER), "stage_split": self.stage_split,
                "expert_tensor_parallel": lay.etp, "recompute_per_stage": list(lay.recompute_per_stage),
                "recompute_layers_per_stage": list(lay.stage_recompute_layers),
                "reshard_after_forward": lay.reshard_after_forward,
            },
            "predicted": {
                "step_time_s": step, "tokens_per_s": est.tokens_per_s, "mfu": est.mfu,
                "tflops_per_gpu": est.tflops_per_gpu, "peak_memory_gb": est.peak_memory / 1e9,
                "memory_gb": {k: v / 1e9 for k, v in est.memory.items()},
                "time_s": dict(est.time),
                "training_days": days, "gpu_hours": days * 24 * est.world, "total_steps": self.total_steps,
                "stages": [dict(s) for s in est.stages],
                "placement": placement(lay, self.cluster["gpus_per_node"]),
            },
            "fp8": self.fp8,
            "alternatives": [_alt(a) for a in self.alternatives],
            "rejected": self.rejected,
            "search": {"evaluated": self.evaluated, "pruned": self.pruned, **self.search},
            "kernels": self.kernels,
            "pins": self.pins,
            "advice": self.advice,
            "pin_notes": self.pin_notes,
            "runtime": self.runtime,
            "kernel_costs": self.kernel_costs,
        }
        return out


def _alt(e: Estimate) -> dict[str, Any]:
    return {"layout": asdict(e.layout), "summary": e.layout.short(), "step_time_s": e.step_time_s,
            "tokens_per_s": e.tokens_per_s, "mfu": e.mfu, "peak_memory_gb": e.peak_memory / 1e9, "fits": e.fits}


def placement(lay: Layout, gpus_per_node: int) -> dict[str, str]:
    """Where each parallel group runs, from the mesh order (tp innermost, pp outermost; experts
    fold etp innermost, then ep, over the tp*cp*dp ranks of a stage)."""
    groups = {"tp": (lay.tp, 1), "cp": (lay.cp, lay.tp), "dp": (lay.dp, lay.tp * lay.cp),
              "pp": (lay.pp, lay.tp * lay.cp * lay.dp), "ep": (lay.ep, lay.etp)}
    out = {}
    for name, (size, stride) in groups.items():
        if size <= 1:
            continue
        span = size * stride
        if span <= gpus_per_node:
            out[name] = f"{size} GPUs inside one node (NVLink)"
        else:
            per_node = max(1, gpus_per_node // stride)
            out[name] = f"{size} GPUs across {size // min(size, per_node)} nodes ({min(size, per_node)} per node, InfiniBand)"
    return out
