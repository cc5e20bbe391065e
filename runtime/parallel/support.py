"""What this runtime can apply, stated once for the planner and for the runtime itself.

The planner enumerates every layout the hardware and the model admit (compiler/search_space.py);
some of them this runtime cannot run yet. Each `Limit` below names one such gap: which
experiments it concerns, which layouts it excludes, why, and how to get past it. The planner
chooses only among layouts no limit excludes (and says how many it set aside, and what the best
of them would have gained); `parallelize` refuses a plan any limit excludes, with the same words,
before it builds a mesh. One table, so the two can never disagree.

A layout is given as columns (numpy arrays over many candidate layouts, or plain scalars for one
plan): dp, tp, cp, pp, ep, etp, zero, sp (sequence parallel), m (micro-batches per step),
schedule (name), fp8 (bool).
`excludes` must work on both, using only elementwise operators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from vlac.compiler.moe_routing import ep_fold_ranks
from vlac.spec import Experiment

Columns = Mapping[str, Any]


@dataclass(frozen=True)
class Limit:
    name: str
    reason: str  # what the runtime does not do, for reports ("... is not run by this runtime")
    fix: str  # the pin or spec change that avoids it
    concerns: Callable[[Experiment], bool]
    excludes: Callable[[Columns], Any]  # True where a layout needs what the runtime lacks
    refused: bool = True  # False: the runtime runs such a layout, but not as the cost model times it

    def message(self) -> str:
        verb = "is not run by this runtime" if self.refused else "is not how this runtime runs it"
        return f"{self.reason} {verb}; {self.fix}"


def _always(_: Experiment) -> bool:
    return True


def _dropless(exp: Experiment) -> bool:
    return exp.moe is not None and exp.moe.capacity_factor is None


def _has_moe(exp: Experiment) -> bool:
    return exp.moe is not None


def _capacity_costed_per_rank(exp: Experiment) -> bool:
    """MoE layers with a capacity, which vlac's runtime replicates over tp without sp
    (compiler/moe_routing.py), costed as another stack runs them (each rank routing its own
    tokens); the cost model charges the replication only for stack: vlac."""
    return exp.moe is not None and exp.stack.preset != "vlac" and not _dropless(exp)


def _token_ranks(c: Columns):
    """Ranks of a pipeline stage that hold distinct tokens of an MoE layer (mesh.py)."""
    return ep_fold_ranks(c["etp"], c["dp"], c["tp"], c["sp"], c["cp"])


LIMITS: tuple[Limit, ...] = (
    Limit("expert_tensor_parallel", "expert tensor parallelism over part of the tensor-parallel group (1 < etp < tp)",
          "--pin etp=1 or etp=<tp>", _always, lambda c: (c["etp"] > 1) & (c["etp"] != c["tp"])),
    Limit("expert_tensor_parallel_dropless", "expert tensor parallelism with dropless routing (moe.capacity_factor: "
          "null)", "--pin etp=1, or set moe.capacity_factor", _dropless, lambda c: c["etp"] > 1),
    Limit("fp8_rowwise_tensor_parallel", "FP8 with rowwise scaling (precision.fp8.recipe: block or mxfp8, torchao "
          "under tensor parallelism) combined with tensor parallelism",
          "precision.fp8.recipe: current or delayed, or --pin tp=1",
          lambda e: e.precision.fp8.recipe in ("block", "mxfp8"), lambda c: (c["tp"] > 1) & c["fp8"]),
    Limit("expert_parallel_outside_token_ranks",
          "expert parallelism folded beyond the ranks that hold distinct tokens of the MoE layers (ep must divide "
          "dp*cp, times tp under sequence parallelism, with etp = 1; dp with experts split by width)",
          "--pin sequence_parallel=true and etp=1, or ep=<a divisor of dp*cp>",
          _has_moe, lambda c: (c["ep"] > 1) & (_token_ranks(c) % c["ep"] != 0)),
    Limit("zero_bubble_fsdp3", "the zero-bubble schedule with ZeRO-3 (FSDP reshards the parameters between a "
          "micro-batch's input-gradient and its deferred weight-gradient pass)", "--pin zero=2, or --pin schedule=1f1b",
          _always, lambda c: (c["pp"] > 1) & (c["schedule"] == "zero_bubble") & (c["dp"] > 1) & (c["zero"] >= 3)),
    Limit("zero_bubble_rounds", "the zero-bubble schedule with a micro-batch count that is not a multiple of its "
          "rounds (max(1, m // pp), torch's ScheduleInterleavedZeroBubble)", "--pin microbatch_size=... (another m)",
          _always, lambda c: (c["pp"] > 1) & (c["schedule"] == "zero_bubble")
          & (c["m"] % np.maximum(1, c["m"] // c["pp"]) != 0)),
    Limit("sequence_parallel_dual_stream", "sequence parallelism with fusion.stream: dual (its per-token stream "
          "selector acts on gathered and on sequence-sharded activations)", "--pin sequence_parallel=false",
          lambda e: e.fusion.stream == "dual", lambda c: (c["tp"] > 1) & c["sp"]),
    Limit("moe_replicated_over_tp", "MoE layers with a capacity, tensor parallelism without sequence parallelism "
          "and etp = 1 as a stack other than vlac's times them (each rank routing its own sequence shard; this "
          "runtime runs all experts on the whole sequence on every tensor-parallel rank there; under sp each routes "
          "its own shard with the whole sequence's capacity positions)",
          "--pin sequence_parallel=true, etp=<tp>, moe.capacity_factor: null, or stack.preset: vlac",
          _capacity_costed_per_rank, lambda c: (c["tp"] > 1) & (c["etp"] == 1) & np.logical_not(c["sp"]),
          refused=False),
    Limit("per_modality_clip", "optimizer.per_modality_clip with pipeline, expert, context or sharded data "
          "parallelism, or with data and tensor parallelism together", "--pin pp=1,ep=1,cp=1,zero=0 (and tp=1 or dp=1)",
          lambda e: e.optimizer.per_modality_clip,
          lambda c: (c["pp"] > 1) | (c["ep"] > 1) | (c["cp"] > 1) | (c["zero"] > 0) | ((c["dp"] > 1) & (c["tp"] > 1))),
)


def limits_for(exp: Experiment) -> tuple[Limit, ...]:
    """The limits that concern this experiment."""
    return tuple(lim for lim in LIMITS if lim.concerns(exp))


def excluded(exp: Experiment, cols: Columns) -> dict[str, np.ndarray]:
    """Limit name -> boolean mask of the layouts it excludes (only limits that exclude any)."""
    out = {}
    for lim in limits_for(exp):
        mask = np.asarray(lim.excludes(cols), dtype=bool)
        if mask.any():
            out[lim.name] = mask
    return out


def unsupported(exp: Experiment, layout: Columns) -> list[str]:
    """Why this runtime cannot run one layout (scalars), one sentence per limit; [] when it can."""
    return [lim.message() for lim in limits_for(exp) if lim.refused and bool(lim.excludes(layout))]


def not_as_timed(exp: Experiment, layout: Columns) -> list[str]:
    """Where this runtime runs one layout (scalars) otherwise than the cost model times it."""
    return [lim.message() for lim in limits_for(exp) if not lim.refused and bool(lim.excludes(layout))]


def check_runnable(exp: Experiment, plan: Mapping[str, Any]) -> None:
    """Refuse a plan.json "plan" section this runtime cannot run, naming every reason."""
    from .mesh import LayoutError  # (mesh imports torch.distributed; this module stays light)

    reasons = unsupported(exp, plan_columns(plan))
    if reasons:
        raise LayoutError("this plan cannot run here: " + "; ".join(reasons) + ". Re-plan without the pins that "
                          "force it (vlac compile shows the runtime's limits), or see docs/runtime-limits.md")


def plan_columns(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of one plan.json "plan" section."""
    return {"dp": plan["dp"], "tp": plan["tp"], "cp": plan["cp"], "pp": plan["pp"], "ep": plan["ep"],
            "etp": plan.get("expert_tensor_parallel", 1), "zero": plan["zero"], "m": plan["num_microbatches"],
            "sp": bool(plan["sequence_parallel"]), "schedule": plan["schedule"], "fp8": bool(plan["fp8"])}
