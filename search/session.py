"""Architecture search: explore model x plan spaces with the compiler in the loop.

    s = vlac.search("examples/vla_10b_moe_h100.yaml",
                    {"moe.experts": [8, 16, 32, 64], "moe.top_k": [1, 2], "backbone.layers": [16, 24, 32]},
                    objective="min:training_days", constraints=["params_active >= 2B"])
    s.best, s.pareto(), s.write("search-out")

Every candidate is the base spec with the candidate's fields set, validated like a spec file
(a SpecError makes it *invalid*), lowered and planned (a PlanError, or no layout that fits in
memory, makes it *infeasible*), then ranked by the objective and filtered by the constraints
(*rejected*); a failure is recorded with its reason, never raised. Lowering goes through a
GraphCache, so a family of candidates differing only in depth (or in fields lowering never reads)
is lowered once. Evaluation runs in a process pool; candidates are generated in the parent from
the seed, so the results do not depend on the number of workers.

Parts of vlac.search: space (the space, candidates), strategies (grid, random, Optuna's TPE,
CMA-ES and NSGA-II), metrics (metrics, objectives, constraints, the scaling law), evaluate (one
candidate), fast (many candidates of one architecture without lowering each), pool (many, in
parallel), front (the Pareto front without near-duplicates), results and picture (files). The
command `vlac search` (vlac/search_cli.py) is a thin layer over this package.

For a user's own optimiser, `Search` has an ask/tell interface:

    s = vlac.Search(base, space, objective="max:tokens_per_s")
    c = s.ask()                             # the strategy's next point, or
    c = s.candidate({"moe.experts": 24})    # a point of the optimiser's choosing
    s.tell(c, s.evaluate(c))
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from vlac.spec import Experiment

from .evaluate import STATUSES, Evaluator, Planner, Result, base_mapping
from .front import DEFAULT_EPSILON, pareto_front
from .metrics import CHINCHILLA, METRICS, Constraint, Objective
from .pool import Progress, evaluate_all
from .space import Candidate, SearchError, Space, check_integers, params_key, spec_path_problem
from .strategies import STRATEGIES, OptunaSampler, make_strategy

ASK_BATCH = 16  # an adaptive strategy proposes this many points before it learns their results


# ---- the search -----------------------------------------------------------------------------------
class Search:
    """A search over `space` from `base` (spec path, mapping or Experiment; `profile`, then the
    `overrides` ("a.b=VALUE"), applied first). `strategy`: grid (every point, the last field
    varying fastest), random (`budget` points drawn with `seed`, without repeats) or one of
    Optuna's samplers, tpe, cmaes (single objective) and nsga2 (the Pareto axes as objectives),
    seeded with `seed`; default grid when the space is discrete. `pareto_epsilon`: relative
    tolerance per Pareto axis under which two front points count as one (vlac.search.front)."""

    def __init__(self, base: str | Path | Mapping[str, Any] | Experiment, space: Mapping[str, Any] | Space,
                 objective: str | Objective | Callable | tuple = "max:tokens_per_s",
                 constraints: Iterable[str | Constraint | Callable] | str = (),
                 strategy: str | None = None, budget: int | None = None, seed: int = 0, profile: str | None = None,
                 overrides: Iterable[str] = (), pareto: tuple[str, str] = ("max:params_active", "max:tokens_per_s"),
                 pareto_epsilon: float | Sequence[float] = DEFAULT_EPSILON, planner: Planner | None = None,
                 fast: bool = True):
        self.space = Space.parse(space)
        self.space.check_paths()
        self.objective = Objective.parse(objective)
        if isinstance(constraints, (str, Constraint)) or callable(constraints):
            constraints = [constraints]
        self.constraints = tuple(Constraint.parse(c) for c in constraints)
        self.strategy = strategy or ("grid" if self.space.discrete else "random")
        if self.strategy not in STRATEGIES:
            raise SearchError(f"strategy {self.strategy!r} is unknown; choose one of: {', '.join(STRATEGIES)} "
                              f"(or drive your own optimiser with Search.ask/candidate/tell)")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise SearchError(f"budget must be a positive number of candidates, got {budget!r}")
        if self.strategy != "grid" and budget is None:
            raise SearchError(f"a {self.strategy} search needs a budget (the number of candidates), e.g. budget=64")
        self.pareto_axes = tuple(Objective.parse(a) for a in pareto)
        if len(self.pareto_axes) != 2 or any(a.fn is not None or a.name not in METRICS for a in self.pareto_axes):
            raise SearchError(f"pareto: give two metrics with directions, e.g. ('max:params_active', 'max:tokens_per_s'); "
                              f"metrics: {', '.join(METRICS)}")
        if pareto_epsilon is None:  # as in a space file: null takes the default
            pareto_epsilon = DEFAULT_EPSILON
        eps = ((pareto_epsilon,) * 2 if isinstance(pareto_epsilon, (int, float))
               else tuple(pareto_epsilon) if isinstance(pareto_epsilon, (list, tuple)) else ())
        if len(eps) != 2 or any(isinstance(e, bool) or not isinstance(e, (int, float)) or e < 0 for e in eps):
            raise SearchError(f"pareto_epsilon: give one non-negative relative tolerance, or one per Pareto axis "
                              f"(e.g. 0.005 for 0.5 %), got {pareto_epsilon!r}")
        self.pareto_epsilon = eps
        self._strategy = make_strategy(self.strategy, self.space, seed, self.objective, self.pareto_axes,
                                       len(self.constraints))
        self.budget, self.seed, self.profile = budget, seed, profile
        data, self.source = base_mapping(base, profile, overrides)
        self.evaluator = Evaluator(data, self.source, self.objective, self.constraints, planner, fast=fast,
                                   deepest=self.space.largest("backbone.layers"))
        self.results: dict[int, Result] = {}
        self.candidates: list[Candidate] = []
        self.seconds = 0.0
        self._by_key: dict[str, Candidate] = {}
        self._proposed = 0

    # ---- ask / tell ---------------------------------------------------------------------------
    def ask(self) -> Candidate | None:
        """The strategy's next unseen point, or None when the budget or the space is used up."""
        if self.budget is not None and self._proposed >= self.budget:
            return None
        params = self._strategy.propose(set(self._by_key))
        if params is None:
            return None
        self._proposed += 1
        cand = self._add(params)
        if isinstance(self._strategy, OptunaSampler):
            self._strategy.bind(cand)
        return cand

    def candidate(self, params: Mapping[str, Any]) -> Candidate:
        """A point of your choosing (any spec fields, not only the space's); the same point twice
        is the same candidate."""
        for path in params:
            problem = spec_path_problem(path)
            if problem:
                raise SearchError(f"candidate: {path!r}: {problem}")
        check_integers(dict(params), "candidate")
        existing = self._by_key.get(params_key(params))
        return existing if existing is not None else self._add(dict(params))

    def _add(self, params: dict[str, Any]) -> Candidate:
        cand = Candidate(len(self.candidates), params)
        self.candidates.append(cand)
        self._by_key[cand.key()] = cand
        return cand

    def evaluate(self, cand: Candidate) -> Result:
        """Validate, lower and plan one candidate in this process."""
        return self.evaluator.evaluate(cand)

    def tell(self, cand: Candidate, result: Result) -> None:
        if result.index != cand.index or self.candidates[cand.index] is not cand:
            raise SearchError(f"tell: result {result.index} is not the result of candidate {cand.index} of this search")
        self.results[cand.index] = result
        self._strategy.observe(cand, result)

    # ---- running a strategy -------------------------------------------------------------------
    def run(self, workers: int | None = None, progress: bool | None = None) -> Search:
        """Ask every candidate of the strategy, evaluate them on `workers` processes (default: the
        cores of this machine; 1 = in this process) and tell the results."""
        # grid and random know every point up front; an adaptive strategy learns batch by batch
        batch = ASK_BATCH if isinstance(self._strategy, OptunaSampler) else None
        t0 = time.perf_counter()
        total = min(n for n in (self.budget, self.space.size) if n is not None) if (self.budget or self.space.size) else None
        with Progress(progress, total, self._progress_text) as bar:
            while True:
                pending = []
                while (batch is None or len(pending) < batch) and (cand := self.ask()) is not None:
                    pending.append(cand)
                if not pending:
                    break
                evaluate_all(self.evaluator, pending, workers, bar,
                             on_result=lambda r: self.tell(self.candidates[r.index], r))
        self.seconds += time.perf_counter() - t0
        return self

    def _progress_text(self) -> str:
        ok = sum(r.ok for r in self.results.values())
        best = self.best
        text = f"{ok} ok"
        if best is not None:
            text += f", best {self.objective.name} {best.objective:.4g} (#{best.index})"
        return text

    # ---- reading the results ------------------------------------------------------------------
    def ordered(self) -> list[Result]:
        return [self.results[i] for i in sorted(self.results)]

    @property
    def best(self) -> Result | None:
        ok = [r for r in self.results.values() if r.ok]
        return min(ok, key=lambda r: (self.objective.sort_key(r.objective), r.index)) if ok else None

    def ranked(self) -> list[Result]:
        ok = [r for r in self.results.values() if r.ok]
        return sorted(ok, key=lambda r: (self.objective.sort_key(r.objective), r.index))

    def pareto(self) -> list[Result]:
        """The ok candidates no other ok candidate beats on both Pareto axes (default: more active
        parameters and more tokens/s), ordered along the first axis, near-duplicates (within
        `pareto_epsilon`) dropped."""
        x, y = self.pareto_axes
        ok = [r for r in self.ordered() if r.ok]
        return pareto_front(ok, lambda r: (x.sort_key(_axis_value(x, r)), y.sort_key(_axis_value(y, r))),
                            self.pareto_epsilon)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for r in self.results.values():
            out[r.status] += 1
        return out

    def experiment(self, result: Result | Candidate) -> Experiment:
        """The validated experiment of a candidate (e.g. the best, to compile or emit)."""
        return self.evaluator.experiment(result.params)

    def describe(self) -> dict[str, Any]:
        return {"base": self.source, "profile": self.profile, "space": self.space.describe(),
                "strategy": self.strategy, "budget": self.budget, "seed": self.seed,
                "objective": self.objective.text(), "constraints": [c.text for c in self.constraints],
                "pareto": [a.text() for a in self.pareto_axes], "pareto_epsilon": list(self.pareto_epsilon),
                "scaling_law": CHINCHILLA.source}

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """results.csv, results.json, results.parquet, pareto.svg, and best.yaml + best_plan.json
        (when a candidate is ok); byte-identical for the same search."""
        from .results import write_results

        return write_results(self, Path(out_dir))


def _axis_value(axis: Objective, r: Result) -> float:
    return float(r.metrics[axis.name])


def search(base: str | Path | Mapping[str, Any] | Experiment, space: Mapping[str, Any] | Space,
           objective: str | Objective | Callable | tuple = "max:tokens_per_s",
           constraints: Iterable[str | Constraint | Callable] | str = (), budget: int | None = None,
           seed: int = 0, workers: int | None = None, strategy: str | None = None, profile: str | None = None,
           overrides: Iterable[str] = (), progress: bool | None = None, out_dir: str | Path | None = None,
           pareto: tuple[str, str] = ("max:params_active", "max:tokens_per_s"),
           pareto_epsilon: float | Sequence[float] = DEFAULT_EPSILON, planner: Planner | None = None,
           fast: bool = True) -> Search:
    """Run a search (grid, random, tpe, cmaes or nsga2) and return it (`.best`, `.ranked()`, `.pareto()`,
    `.results`); with `out_dir`, also write its result files there.

    objective: a metric ("max:tokens_per_s", "min:training_days", "min:chinchilla_loss", ...; see
    vlac.search.METRICS), "spec.PATH", a plan-JSON path, or fn(experiment, plan).
    constraints: "NAME OP VALUE" strings ("params_active <= 3B", "gpus <= 128", "fits") or
    fn(experiment, plan) -> bool. budget: most candidates evaluated. workers: processes (default:
    this machine's cores)."""
    s = Search(base, space, objective=objective, constraints=constraints, strategy=strategy, budget=budget, seed=seed,
               profile=profile, overrides=overrides, pareto=pareto, pareto_epsilon=pareto_epsilon, planner=planner,
               fast=fast)
    s.run(workers=workers, progress=progress)
    if out_dir is not None:
        s.write(out_dir)
    return s


__all__ = ["Search", "search"]
