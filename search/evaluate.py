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
from typing import Any, Callable, Iterable, Mapping, Sequence

from pydantic import ValidationError

from vlac.compiler.graph_cache import GraphCache
from vlac.compiler.plan import Plan
from vlac.compiler.planner import PlanError
from vlac.compiler.planner import plan as compiler_plan
from vlac.spec import Experiment, Issue, SpecError, load, resolve_mapping
from vlac.spec.input_bounds import check_shape

from .fast import FastPath, applies
from .metrics import Constraint, Objective, compute_metrics
from .space import Candidate, SearchError

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
    # per constraint, how far it is broken (<= 0: holds), as Optuna's constraints_func expects
    violations: tuple[float, ...] = ()
    seconds: float = 0.0  # wall time of the evaluation; never written to result files

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "params": self.params, "status": self.status, "reason": self.reason,
                "objective": self.objective, "layout": self.layout, "metrics": self.metrics}


Planner = Callable[..., Plan]  # plan(exp, graph=...) -> Plan


class Evaluator:
    """Turns a candidate into a Result. Holds the base spec (profile applied) and a GraphCache;
    one per process. `planner` is the compiler's planner unless the caller adds to it (the CLI
    passes vlac.plan, which also records the runtime's kernels, so best_plan.json equals
    `vlac compile --json`)."""

    def __init__(self, base: dict[str, Any], source: str, objective: Objective, constraints: Sequence[Constraint],
                 planner: Planner | None = None, fast: bool = True, deepest: float | None = None):
        self.base, self.source = base, source
        self.deepest = deepest  # the space's largest backbone.layers, if it sets them (FastPath)
        self.objective, self.constraints = objective, tuple(constraints)
        self.planner = planner or compiler_plan
        # the fast path reproduces the compiler planner's choice (a planner that only adds to the
        # plan, like vlac.plan, chooses the same); off when results need the whole plan
        self.fast = fast and applies(objective, self.constraints)
        self.cache = GraphCache()
        self.fast_path = FastPath(self.cache, deepest)

    def __getstate__(self) -> dict[str, Any]:  # spawned workers build their own cache
        state = dict(self.__dict__)
        state["cache"] = state["fast_path"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.cache = GraphCache()
        self.fast_path = FastPath(self.cache, self.deepest)

    def experiment(self, params: Mapping[str, Any]) -> Experiment:
        """The base spec with the candidate's fields set, validated. The base passed the loader's
        input bounds (base_mapping) and each value passes them here, so the spec is validated
        directly, without the loader's deep copy and walk of the whole mapping (0.36 -> 0.13 CPU
        ms per flagship candidate; 4 % of a random search's samples). Sections on the
        candidate's paths are copied as they are set and no validator changes its input, so the
        shared base stays as it is. An invalid candidate goes through the loader for its report
        (each field named, as `vlac compile` names it)."""
        data = dict(self.base)
        for path, value in params.items():
            check_shape(value, self.source, f"search space value of {path}")
            _set(data, path, value)
        try:
            return Experiment.model_validate(data)
        except ValidationError:
            return load(data)  # raises the loader's SpecError

    def evaluate(self, cand: Candidate) -> Result:
        t0 = time.perf_counter()
        result = self._evaluate(cand)
        result.seconds = time.perf_counter() - t0
        return result

    def evaluate_many(self, cands: Sequence[Candidate]) -> list[Result]:
        """Results of `cands` in order: through the fast path when it applies."""
        return list(self.evaluate_fast(cands)) if self.fast else [self.evaluate(c) for c in cands]

    def evaluate_fast(self, cands: Sequence[Candidate]):
        """Results of `cands` in order, through the fast path where it decides (vlac.search.fast)."""
        for cand in cands:
            t0 = time.perf_counter()
            result = self._evaluate_fast(cand)
            result.seconds = time.perf_counter() - t0
            yield result

    def _evaluate_fast(self, cand: Candidate) -> Result:
        try:
            exp = self.experiment(cand.params)
        except SpecError as e:
            return Result(cand.index, cand.params, "invalid", "; ".join(str(i) for i in e.issues))
        try:
            fast = self.fast_path.plan(exp)
        except Exception:  # whatever the fast path cannot take, the full path decides and reports
            fast = None
        if fast is None:
            return self._evaluate(cand, exp)
        return self._score(cand, exp, fast.plan)

    def _evaluate(self, cand: Candidate, exp: Experiment | None = None) -> Result:
        idx, params = cand.index, cand.params
        if exp is None:
            try:
                exp = self.experiment(params)
            except SpecError as e:
                return Result(idx, params, "invalid", "; ".join(str(i) for i in e.issues))
        try:
            plan = self.planner(exp, graph=self.cache.lower(exp))
        except PlanError as e:
            return Result(idx, params, "infeasible", _one_line(e))
        except Exception as e:  # a model the runtime cannot build or trace: a result, not a crash
            return Result(idx, params, "error", f"compiling failed: {type(e).__name__}: {_one_line(e)}")
        return self._score(cand, exp, plan)

    def _score(self, cand: Candidate, exp: Experiment, plan: Plan) -> Result:
        idx, params = cand.index, cand.params
        j = plan.to_json()
        metrics = compute_metrics(exp, j)
        layout = plan.chosen.layout.short()
        if not plan.feasible:
            reason = plan.advice[0] if plan.advice else "no layout fits in memory"
            return Result(idx, params, "infeasible", reason, metrics=metrics, layout=layout)
        try:
            value = self.objective.value(exp, plan, j, metrics)
            checks = [c.check(exp, plan, j, metrics) for c in self.constraints]
        except SearchError:
            raise  # the objective or a constraint names no field: a definition error, stop the search
        except Exception as e:
            return Result(idx, params, "error", f"objective or constraint raised {type(e).__name__}: {_one_line(e)}",
                          metrics=metrics, layout=layout)
        if not math.isfinite(value):
            return Result(idx, params, "error", f"objective {self.objective.name} is {value}", metrics=metrics, layout=layout)
        broken = [why for why, _ in checks if why]
        return Result(idx, params, "rejected" if broken else "ok", "; ".join(broken), value, metrics, layout,
                      violations=tuple(amount for _, amount in checks))


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = data
    for i, key in enumerate(parts[:-1]):
        nxt = node.get(key)
        if nxt is None:
            nxt = {}
        elif not isinstance(nxt, dict):
            raise SpecError([Issue(".".join(parts[: i + 1]), f"is a {type(nxt).__name__}, not a section; cannot set {path}")])
        # copy the section before changing it: the base spec is shared by every candidate
        node[key] = nxt = dict(nxt)
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
