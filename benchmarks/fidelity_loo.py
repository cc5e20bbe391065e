"""Leave-one-out error of the cost model over the cited runs of `fidelity.py`.

The model's calibrated constants (below, each with where its starting value comes from) were set
against these same runs, so their in-sample error flatters the model. Here each run is predicted
by constants chosen on the other runs only: per constant, the grid value with the lowest median
|error| over the other runs (the other constants at their defaults), then the held-out run is
planned with the chosen values. Splits by source (stack), dense/MoE and precision follow.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

import vlac
from vlac.compiler import cost_model, data_parallel, hardware


@dataclass(frozen=True)
class Constant:
    name: str
    module: Any
    grid: tuple[float, ...]
    source: str
    # the runs whose plan the constant enters (the others' errors do not depend on it, so they
    # are not planned again for each grid value)
    applies: Callable[[Any], bool] = lambda case: True


CONSTANTS = (
    Constant("GEMM_EFF_BF16", hardware, (0.60, 0.70, 0.80),
             "sustained share of the BF16 peak in a training step; an isolated 8192^3 cuBLAS GEMM reaches "
             "~750 of 989 TFLOP/s (NVIDIA H100 datasheet peak; compiler/hardware.py)"),
    Constant("GEMM_EFF_FP8", hardware, (0.45, 0.55, 0.65),
             "sustained share of the FP8 peak; isolated FP8 GEMMs reach ~1,300-1,450 of 1,979 TFLOP/s",
             lambda case: case.fp8 is not None),
    Constant("EP_EXPOSED", cost_model, (0.50, 0.75, 1.0),
             "exposed share of expert all-to-alls (Megatron's 1F1B all-to-all overlap hides the rest)",
             lambda case: case.pins.get("ep", 1) > 1),
    Constant("TP_EXPOSED", cost_model, (0.20, 0.35, 0.50),
             "exposed share of TP collectives (TE userbuffers tp_comm_overlap hides most)",
             lambda case: case.pins.get("tp", 1) > 1),
    Constant("NVLINK_OVERLAP_SLOWDOWN", data_parallel, (0.3, 0.5, 0.7, 0.9),
             "share of the hidden time of a data-parallel NCCL ring's NVLink phase that the overlapped compute "
             "loses: ~3 HBM passes per byte at 370 GB/s bus bandwidth (~1.1 of 3.35 TB/s) and 16-32 channels' "
             "SMs of 132 give ~0.5 (compiler/data_parallel.py)"),
)


def _errors(cases, graphs, values: dict[str, float]) -> list[float]:
    saved = {c.name: getattr(c.module, c.name) for c in CONSTANTS}
    try:
        for c in CONSTANTS:
            setattr(c.module, c.name, values.get(c.name, saved[c.name]))
        return [_one(case, exp, g) for case, (exp, g) in zip(cases, graphs)]
    finally:
        for c in CONSTANTS:
            setattr(c.module, c.name, saved[c.name])


def _errors_where(c: Constant, cases, graphs, base: list[float], value: float) -> list[float]:
    """Every run's error with constant `c` at `value`: planned again where it applies."""
    idx = [i for i, case in enumerate(cases) if c.applies(case)]
    moved = dict(zip(idx, _errors([cases[i] for i in idx], [graphs[i] for i in idx], {c.name: value})))
    return [moved.get(i, base[i]) for i in range(len(cases))]


def _one(case, exp, g) -> float:
    import fidelity

    p = vlac.plan(exp, graph=g, pin=case.pins)
    fpt, _ = fidelity.publisher_flops_per_token(case)
    return p.chosen.tokens_per_s / case.gpus * fpt / 1e12 / case.published_tflops - 1


def leave_one_out(runs) -> list[dict[str, Any]]:
    """`runs`: (case, experiment, lowered graph) triples. One row per case: its in-sample error,
    its leave-one-out error and the constants chosen without it."""
    cases = [c for c, _, _ in runs]
    graphs = [(exp, g) for _, exp, g in runs]
    base = _errors(cases, graphs, {})
    table = {c.name: {v: _errors_where(c, cases, graphs, base, v) for v in c.grid} for c in CONSTANTS}
    rows = []
    for i, case in enumerate(cases):
        chosen = {}
        for c in CONSTANTS:
            score = {v: statistics.median(abs(e) for j, e in enumerate(errs) if j != i)
                     for v, errs in table[c.name].items()}
            chosen[c.name] = min(c.grid, key=lambda v: (score[v], abs(v - getattr(c.module, c.name))))
        loo = _errors([case], [graphs[i]], chosen)[0]
        rows.append({"case": case, "in_sample": base[i], "loo": loo, "chosen": chosen})
    if rows:
        rows[0]["all_runs_fit"] = {c.name: min(c.grid, key=lambda v: (statistics.median(abs(e) for e in table[c.name][v]),
                                                                    abs(v - getattr(c.module, c.name))))
                                   for c in CONSTANTS}
    return rows


def all_runs_fit(rows: list[dict[str, Any]]) -> list[str]:
    """Per constant, the grid value with the lowest median |error| over every run (the others at
    their defaults), against its default: the defaults should be this fit, so that the in-sample
    and leave-one-out figures describe the same model."""
    fit = rows[0].get("all_runs_fit", {}) if rows else {}
    out = []
    for c in CONSTANTS:
        if c.name in fit:
            default = getattr(c.module, c.name)
            flag = "" if fit[c.name] == default else "  <- default differs from the all-runs fit"
            out.append(f"  {c.name:26} default {default:g}, all-runs fit {fit[c.name]:g}{flag}")
    return out


def groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows by regime: all, by software stack, by source, by dense/MoE, by precision."""
    out: dict[str, list[dict[str, Any]]] = {"all": list(rows)}
    for r in rows:
        c = r["case"]
        for key in (f"stack: {c.stack}", f"source: {c.source}", f"model: {'MoE' if c.model.experts else 'dense'}",
                    f"precision: {'FP8' if c.fp8 else 'BF16'}"):
            out.setdefault(key, []).append(r)
    return out


def _stats(sel: list[dict[str, Any]]) -> dict[str, Any]:
    errs = [abs(r["loo"]) for r in sel]
    return {"runs": len(sel), "median": round(statistics.median(errs), 4), "max": round(max(errs), 4)}


def summary(rows: list[dict[str, Any]]) -> list[str]:
    return [f"  {label:60} runs {st['runs']:>2}  median {st['median'] * 100:5.1f} %  max {st['max'] * 100:5.1f} %"
            for label, st in ((k, _stats(v)) for k, v in sorted(groups(rows).items()))]


def band(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What vlac.compiler.error_band reads: per regime, runs and the median / worst |error|."""
    return {"groups": {k: _stats(v) for k, v in sorted(groups(rows).items())},
            "stacks": sorted({r["case"].stack for r in rows}),
            "sources": sorted({r["case"].source for r in rows}),
            "runs": sorted(r["case"].name for r in rows)}
