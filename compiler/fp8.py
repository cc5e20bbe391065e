"""FP8 policy: whether the plan can use FP8 at all, the TransformerEngine recipe, one decision
per GEMM with its reason, and the predicted speedup (the same layout costed in BF16)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from vlac.spec import Experiment
from vlac.spec.system import Cluster

from .graph import Graph
from .plan import Layout

RECIPE_NAMES = {"delayed": "DelayedScaling", "current": "Float8CurrentScaling",
                "block": "Float8BlockScaling", "mxfp8": "MXFP8BlockScaling"}
BLACKWELL_MARKERS = ("B100", "B200", "B300", "GB200", "GB300")


def fp8_support(exp: Experiment, cluster: Cluster) -> tuple[bool, str]:
    """(use FP8, why not when not)."""
    cfg, gpu = exp.precision.fp8, cluster.gpu
    if not cfg.enabled:
        return False, "FP8 is off (precision.fp8.enabled: false)"
    if gpu.fp8_flops <= 0:
        return False, f"{gpu.name} has no FP8 tensor cores (gpu.fp8_flops is 0); the plan trains in BF16"
    if cfg.recipe == "mxfp8" and not any(mark in gpu.name.upper() for mark in BLACKWELL_MARKERS):
        return False, (f"MXFP8BlockScaling needs Blackwell tensor cores and {gpu.name} is not one; "
                       f"use precision.fp8.recipe: delayed or current")
    return True, ""


def recipe(exp: Experiment) -> dict[str, Any]:
    cfg = exp.precision.fp8
    out: dict[str, Any] = {"name": RECIPE_NAMES[cfg.recipe], "format": cfg.format,
                           "formats": {"forward": "E4M3", "backward": "E5M2" if cfg.format == "HYBRID" else "E4M3"}}
    if cfg.recipe == "delayed":
        out.update(margin=cfg.margin, amax_history_len=cfg.amax_history_len, amax_compute_algo=cfg.amax_compute_algo)
    elif cfg.recipe == "current":
        out["scaling"] = "per tensor, from the current amax of each cast"
    elif cfg.recipe == "block":
        out["block_shapes"] = {"activations": [1, 128], "weights": [128, 128]}
    else:
        out["block_shapes"] = {"all": [1, 32]}
    # keys older plan consumers read, whatever the recipe
    out.setdefault("margin", cfg.margin)
    out.setdefault("amax_history_len", cfg.amax_history_len)
    out.setdefault("amax_compute_algo", cfg.amax_compute_algo)
    return out


def fp8_plan(exp: Experiment, g: Graph, layout: Layout, off_reason: str, bf16_step: float | None,
             fp8_step: float) -> dict[str, Any]:
    gemms = [n for n in g.nodes if n.kind in ("gemm", "router", "attention")]
    decisions = []
    for n in gemms:
        use = bool(layout.fp8 and n.fp8_eligible)
        reason = n.fp8_reason or "not a GEMM eligible for FP8"
        if n.fp8_eligible and not layout.fp8:
            reason = f"eligible, but {off_reason or 'FP8 is off'}"
        decisions.append({"node": n.name, "module": n.module, "layer": n.layer, "kind": n.kind, "fp8": use, "reason": reason,
                          "flops": n.flops_fwd + n.flops_bwd})
    total = sum(d["flops"] for d in decisions) or 1.0
    out: dict[str, Any] = {
        "enabled": bool(layout.fp8),
        "recipe": recipe(exp),
        "gemm_flops_share": sum(d["flops"] for d in decisions if d["fp8"]) / total,
        "decisions_by_reason": dict(sorted(Counter(d["reason"] for d in decisions).items())),
        "gemms": decisions,
    }
    if off_reason:
        out["off_reason"] = off_reason
    if exp.precision.fp8.recipe == "block":
        out["note"] = ("Float8BlockScaling is emulated on Hopper: its GEMMs are costed at the BF16 rate plus the "
                       "casts, so expect no speedup there")
    if bf16_step is not None:
        out["predicted_speedup"] = bf16_step / fp8_step
        out["bf16_step_time_s"] = bf16_step
    return out
