"""Evaluating one search candidate: the base spec with the candidate's fields set, validated,
lowered (through a GraphCache) and planned, then scored by the objective and checked against the
constraints. Every failure becomes a Result with its reason; only a wrong search definition
(SearchError) is raised."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from vlac.compiler.graph_cache import GraphCache
from vlac.compiler.planner import PlanError
from vlac.spec import Experiment, Issue, SpecError, load, resolve_mapping

from .api import plan as _plan
from .search_metrics import Constraint, Objective, compute_metrics
from .search_space import Candidate, SearchError

STATUSES = ("ok", "rejected", "infeasible", "invalid", "error")

@dataclass
class Result:
    """The outcome of one candidate. `status`: ok (feasible, all constraints hold), rejected (a
    constraint fails), infeasible (no layout fits / no legal layout), invalid (the spec is wrong),
    error (lowering or a user function raised). `metrics` are present from planning on."""

    index: int
    params: dict[str, Any]
    status: str
    reason: str = ""
    objective: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    layout: str = ""
    seconds: float = 0.0  # wall time of the evaluation; never written to result files

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "params": self.params, "status": self.status, "reason": self.reason,
                "objective": self.objective, "layout": self.layout, "metrics": self.metrics}


class Evaluator:
    """Turns a candidate into a Result. Holds the base spec (profile applied) and a GraphCache;
    one per process."""

    def __init__(self, base: dict[str, Any], source: str, objective: Objective, constraints: Sequence[Constraint]):
        self.base, self.source = base, source
        self.objective, self.constraints = objective, tuple(constraints)
        self.cache = GraphCache()

    def __getstate__(self) -> dict[str, Any]:  # spawned workers build their own cache
        state = dict(self.__dict__)
        state["cache"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.cache = GraphCache()

    def experiment(self, params: Mapping[str, Any]) -> Experiment:
        data = copy.deepcopy(self.base)
        for path, value in params.items():
            _set(data, path, value)
        return load(data)

    def evaluate(self, cand: Candidate) -> Result:
        t0 = time.perf_counter()
        result = self._evaluate(cand)
        result.seconds = time.perf_counter() - t0
        return result

    def _evaluate(self, cand: Candidate) -> Result:
        idx, params = cand.index, cand.params
        try:
            exp = self.experiment(params)
        except SpecError as e:
            return Result(idx, params, "invalid", "; ".join(str(i) for i in e.issues))
        try:
            plan = _plan(exp, graph=self.cache.lower(exp))
        except PlanError as e:
            return Result(idx, params, "infeasible", _one_line(e))
        except Exception as e:  # a model the runtime cannot build or trace: a result, not a crash
            return Result(idx, params, "error", f"compiling failed: {type(e).__name__}: {_one_line(e)}")
        j = plan.to_json()
        metrics = compute_metrics(exp, j)
        layout = plan.chosen.layout.short()
        if not plan.feasible:
            reason = plan.advice[0] if plan.advice else "no layout fits in memory"
            return Result(idx, params, "infeasible", reason, metrics=metrics, layout=layout)
        try:
            value = self.objective.value(exp, plan, j, metrics)
            broken = [v for c in self.constraints if (v := c.violation(exp, plan, j, metrics))]
        except SearchError:
            raise  # the objective or a constraint names no field: a definition error, stop the search
        except Exception as e:
            return Result(idx, params, "error", f"objective or constraint raised {type(e).__name__}: {_one_line(e)}",
                          metrics=metrics, layout=layout)
        if not math.isfinite(value):
            return Result(idx, params, "error", f"objective {self.objective.name} is {value}", metrics=metrics, layout=layout)
        return Result(idx, params, "rejected" if broken else "ok", "; ".join(broken), value, metrics, layout)


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = data
    for i, key in enumerate(parts[:-1]):
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        elif not isinstance(nxt, dict):
            raise SpecError([Issue(".".join(parts[: i + 1]), f"is a {type(nxt).__name__}, not a section; cannot set {path}")])
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def base_mapping(base: str | Path | Mapping[str, Any] | Experiment, profile: str | None,
                  overrides: Iterable[str]) -> tuple[dict[str, Any], str]:
    data, source = resolve_mapping(base, overrides, profile)
    if isinstance(base, Experiment):
        source = base.name
    elif isinstance(base, Mapping):
        source = str(base.get("name", source))
    load(data)  # the base itself must be valid: a wrong base would make every candidate invalid
    return data, source


__all__ = ["Evaluator", "Result", "STATUSES", "base_mapping"]
