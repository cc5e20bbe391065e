"""FP8 policy: the recipe, one decision per GEMM with its reason, and the predicted speedup."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any, Callable

from vlac.spec import Experiment

from .graph import Graph
from .plan import Estimate, Layout

RECIPE_NAMES = {"delayed": "DelayedScaling", "current": "Float8CurrentScaling",
                "block": "Float8BlockScaling", "mxfp8": "MXFP8BlockScaling"}


def fp8_decisions(exp: Experiment, g: Graph, layout: Layout, estimate: Callable[[Layout], Estimate]) -> dict[str, Any]:
    cfg = exp.precision.fp8
    gemms = [n for n in g.nodes if n.kind in ("gemm", "router", "attention")]
    decisions = []
    for n in gemms:
        use = bool(layout.fp8 and n.fp8_eligible)
        reason = n.fp8_reason or "not a GEMM eligible for FP8"
        if n.fp8_eligible and not layout.fp8:
            reason = "eligible, but FP8 is off (precision.fp8.enabled: false or the GPU has no FP8)"
        decisions.append({"node": n.name, "layer": n.layer, "kind": n.kind, "fp8": use, "reason": reason,
                          "flops": n.flops_fwd + n.flops_bwd})
    total = sum(d["flops"] for d in decisions) or 1.0
    share = sum(d["flops"] for d in decisions if d["fp8"]) / total
    out: dict[str, Any] = {
        "enabled": bool(layout.fp8),
        "recipe": {"name": RECIPE_NAMES[cfg.recipe], "format": cfg.format, "margin": cfg.margin,
                   "amax_history_len": cfg.amax_history_len, "amax_compute_algo": cfg.amax_compute_algo},
        "gemm_flops_share": share,
        "decisions_by_reason": dict(sorted(Counter(d["reason"] for d in decisions).items())),
        "gemms": decisions,
    }
    if cfg.recipe == "block":
        out["recipe"]["block_shapes"] = {"activations": [1, 128], "weights": [128, 128]}
        out["note"] = "Float8BlockScaling is emulated on Hopper; expect less speedup than on Blackwell"
    if layout.fp8:
        bf16 = estimate(replace(layout, fp8=False))
        fp8 = estimate(layout)
        out["predicted_speedup"] = bf16.step_time_s / fp8.step_time_s
    return out
