"""The public API: load -> lower -> plan -> emit -> submit."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from vlac.compiler.graph import Graph
from vlac.compiler.lower import lower as _lower
from vlac.compiler.plan import Plan
from vlac.compiler.planner import plan as _plan
from vlac.runtime.kernels import KERNELS
from vlac.spec import Experiment
from vlac.spec import load as _load
from vlac.spec.system import Cluster
from vlac.templates.emit import render

from .submission import EXECUTORS, submit
from .version import __version__


def load(source: str | Path | Mapping[str, Any] | Experiment, overrides: Iterable[str] = (),
         profile: str | None = None) -> Experiment:
    """Read and validate a spec (file path, mapping or Experiment); raises SpecError."""
    return _load(source, overrides, profile)


def lower(exp: Experiment, micro_batch: int = 1, seq_len: int | None = None, dtype: str | None = None) -> Graph:
    """The experiment as an FX graph on the meta device, every node annotated with its costs."""
    return _lower(exp, micro_batch=micro_batch, seq_len=seq_len, dtype=dtype)


def plan(exp: Experiment, cluster: Cluster | None = None, pin: Mapping[str, Any] | None = None,
         graph: Graph | None = None) -> Plan:
    """Choose the parallel layout, micro-batching, recompute and FP8 use for a cluster
    (`graph`: an already lowered graph of `exp`, to skip lowering again)."""
    p = _plan(exp, cluster=cluster, pin=dict(pin or {}), graph=graph)
    # The program runs on the cluster's GPUs, where torch's CUDA builds ship Triton: record the
    # Triton kernels the runtime will select there (vlac.runtime.kernels picks them on CUDA).
    p.kernels = {name: "triton" for name in KERNELS}
    return p


def emit(exp: Experiment, plan: Plan, out_dir: str | Path) -> Path:
    """Write the runnable program directory; byte-identical for the same inputs."""
    if not plan.feasible:
        raise ValueError("the plan does not fit in memory; emit needs a feasible plan:\n  " + "\n  ".join(plan.advice))
    runtime = plan.runtime or {}
    if not runtime.get("runs", True):
        raise ValueError(f"vlac's runtime cannot run the plan {plan.chosen.layout.short()} "
                         f"({runtime.get('why', '')}):\n  " + "\n  ".join(runtime["unsupported"]))
    return render(exp, plan.to_json(), out_dir, __version__)


__all__ = ["EXECUTORS", "emit", "load", "lower", "plan", "submit"]
