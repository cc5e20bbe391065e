"""What this runtime can apply, stated once for the planner and for the runtime itself.

The planner enumerates every layout the hardware and the model admit (compiler/search_space.py);
some of them this runtime cannot run yet. Each `Limit` below names one such gap: which
experiments it concerns, which layouts it excludes, why, and how to get past it. The planner
chooses only among layouts no limit excludes (and says how many it set aside, and what the best
of them would have gained); `parallelize` refuses a plan any limit excludes, with the same words,
before it builds a mesh. One table, so the two can never disagree.

A layout is given as columns (numpy arrays over many candidate layouts, or plain scalars for one
plan): dp, tp, cp, pp, ep, etp, zero, sp (sequence parallel), schedule (name), fp8 (bool).
`excludes` must work on both, using only elementwise operators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from vlac.spec import Experiment

Columns = Mapping[str, Any]


@dataclass(frozen=True)
class Limit:
    name: str
    reason: str  # what the runtime does not do, for reports ("... is not run by this runtime")
    fix: str  # the pin or spec change that avoids it
    concerns: Callable[[Experiment], bool]
    excludes: Callable[[Columns], Any]  # True where a layout needs what the runtime lacks


def _always(_: Experiment) -> bool:
    return True


def _dropless(exp: Experiment) -> bool:
    return exp.moe is not None and exp.moe.capacity_factor is None


LIMITS: tuple[Limit, ...] = (
    Limit("context_parallel", "context parallelism (cp > 1)", "--pin cp=1",
          _always, lambda c: c["cp"] > 1),
    Limit("expert_tensor_parallel", "expert tensor parallelism (etp > 1)", "--pin etp=1",
          _always, lambda c: c["etp"] > 1),
    Limit("fp8_tensor_parallel", "FP8 GEMMs combined with tensor parallelism", "--pin tp=1, or precision.fp8: false",
          _always, lambda c: (c["tp"] > 1) & c["fp8"]),
    Limit("expert_parallel_outside_dp",
          "expert parallelism folded beyond the data-parallel ranks (ep must divide dp here)",
          "--pin ep=<a divisor of dp>", _always, lambda c: (c["ep"] > 1) & (c["dp"] % c["ep"] != 0)),
    Limit("zero_bubble", "the zero-bubble pipeline schedule", "--pin schedule=1f1b (or interleaved_1f1b)",
          _always, lambda c: (c["pp"] > 1) & (c["schedule"] == "zero_bubble")),
    Limit("pipeline_late_fusion", "pipeline parallelism with late fusion (cross-attention reads media on every "
          "stage)", "--pin pp=1", lambda e: e.fusion.mode == "late", lambda c: c["pp"] > 1),
    Limit("pipeline_corrupted_inputs", "pipeline parallelism with losses.masked or losses.flow_matching (the first "
          "stage corrupts inputs the last stage's loss needs)", "--pin pp=1",
          lambda e: bool(e.losses.masked or e.losses.flow_matching), lambda c: c["pp"] > 1),
    Limit("pipeline_tied_embeddings", "pipeline parallelism with backbone.tied_embeddings (first and last stage "
          "would share one weight)", "--pin pp=1", lambda e: e.backbone.tied_embeddings, lambda c: c["pp"] > 1),
    Limit("tensor_parallel_tied_embeddings", "tensor parallelism with backbone.tied_embeddings", "--pin tp=1",
          lambda e: e.backbone.tied_embeddings, lambda c: c["tp"] > 1),
    Limit("tensor_parallel_late_fusion", "tensor parallelism with late fusion (cross-attention layers)",
          "--pin tp=1", lambda e: e.fusion.mode == "late", lambda c: c["tp"] > 1),
    Limit("tensor_parallel_dual_stream", "tensor parallelism with fusion.stream: dual", "--pin tp=1",
          lambda e: e.fusion.stream == "dual", lambda c: c["tp"] > 1),
    Limit("expert_parallel_dropless", "expert parallelism with dropless routing (moe.capacity_factor: null)",
          "--pin ep=1, or set moe.capacity_factor", _dropless, lambda c: c["ep"] > 1),
    Limit("per_modality_clip", "optimizer.per_modality_clip with pipeline, expert or sharded data parallelism, or "
          "with data and tensor parallelism together", "--pin pp=1,ep=1,zero=0 (and tp=1 or dp=1)",
          lambda e: e.optimizer.per_modality_clip,
          lambda c: (c["pp"] > 1) | (c["ep"] > 1) | (c["zero"] > 0) | ((c["dp"] > 1) & (c["tp"] > 1))),
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
    return [f"{lim.reason} is not run by this runtime; {lim.fix}"
            for lim in limits_for(exp) if bool(lim.excludes(layout))]


def plan_columns(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of one plan.json "plan" section."""
    return {"dp": plan["dp"], "tp": plan["tp"], "cp": plan["cp"], "pp": plan["pp"], "ep": plan["ep"],
            "etp": plan.get("expert_tensor_parallel", 1), "zero": plan["zero"],
            "sp": bool(plan["sequence_parallel"]), "schedule": plan["schedule"], "fp8": bool(plan["fp8"])}
