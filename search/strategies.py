"""How a search proposes its next point: grid, random, or one of Optuna's samplers.

Every strategy answers `propose()` with a point's params (or None when it has nothing new) and
learns from `observe(candidate, result)`. Optuna's samplers are driven through its ask-and-tell
interface (`study.ask` / `study.tell`), so vlac keeps the loop, the deduplication and the
evaluation pool:

- tpe: Tree-structured Parzen Estimator (Bergstra et al. 2011), single objective, constraints
  through `constraints_func`;
- cmaes: CMA-ES (Hansen 2016), single objective; Optuna's CmaEsSampler takes no constraints, so a
  candidate that breaks one is told as failed (CMA-ES then never ranks it);
- nsga2: NSGA-II (Deb et al. 2002), multi-objective on the search's Pareto axes, constraints
  through `constraints_func`.

Constraints reach Optuna as it expects: one number per constraint, <= 0 when the constraint
holds (Result.violations), set with `Trial.set_constraint` (Optuna 5; earlier versions read them
through the samplers' `constraints_func`), and kept in the trial's user attribute `constraints`.
Candidates that are invalid, infeasible or errors are told as failed trials.

A list axis is searched by its position in the list (an integer parameter), so CMA-ES and TPE see
neighbouring values as near: list numeric values in order. Ranges map to Optuna's integer or
float distributions (with `step` or `log`). Samplers are seeded with the search's seed, and the
search asks in fixed batches, so the same seed proposes the same points whatever the number of
workers.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Iterator

from .space import Axis, Candidate, SearchError, Space, params_key

if TYPE_CHECKING:
    from .evaluate import Result
    from .metrics import Objective

STRATEGIES = ("grid", "random", "tpe", "cmaes", "nsga2")
RANDOM_ATTEMPTS = 1000  # draws without a new point before a strategy calls the space exhausted
CONSTRAINTS_ATTR = "constraints"


class Grid:
    """Every point of a discrete space, the last axis varying fastest."""

    def __init__(self, space: Space, seed: int):
        space.check_grid()  # a continuous entry or too many points: refused before any evaluation
        self._points: Iterator[dict[str, Any]] = space.grid()

    def propose(self, seen: set[str]) -> dict[str, Any] | None:
        for params in self._points:
            if params_key(params) not in seen:
                return params
        return None

    def observe(self, cand: Candidate, result: Result) -> None:
        pass


class RandomDraws:
    """Uniform draws (log-uniform for `log` ranges) from the seed, without repeats."""

    def __init__(self, space: Space, seed: int):
        self.space, self._rng = space, random.Random(seed)

    def propose(self, seen: set[str]) -> dict[str, Any] | None:
        size = self.space.size
        if size is not None and len(seen) >= size:
            return None
        for _ in range(RANDOM_ATTEMPTS):
            params = self.space.sample(self._rng)
            if params_key(params) not in seen:
                return params
        return None

    def observe(self, cand: Candidate, result: Result) -> None:
        pass


class OptunaSampler:
    """An Optuna sampler behind propose/observe. `objectives`: the single objective (tpe, cmaes)
    or the Pareto axes (nsga2)."""

    def __init__(self, name: str, space: Space, seed: int, objectives: tuple[Objective, ...], n_constraints: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # vlac reports progress itself
        self.space, self.objectives = space, objectives
        # Optuna 5 reads constraints set on the trial; before it, a sampler asks constraints_func
        self.set_constraint = hasattr(optuna.trial.Trial, "set_constraint")
        constraints = _constraints_of if n_constraints and not self.set_constraint else None
        if name == "tpe":
            sampler = optuna.samplers.TPESampler(seed=seed, constraints_func=constraints)
        elif name == "cmaes":
            sampler = optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        elif name == "nsga2":
            sampler = optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints)
        else:
            raise SearchError(f"strategy {name!r} is not an Optuna sampler; choose one of: tpe, cmaes, nsga2")
        self.cmaes = name == "cmaes"
        self.study = optuna.create_study(sampler=sampler, directions=[
            "minimize" if o.direction == "min" else "maximize" for o in objectives])
        self.distributions = {axis.name: _distribution(axis) for axis in space.axes}
        self._trials: dict[int, Any] = {}  # candidate index -> its open trial
        self._waiting: dict[str, list[Any]] = {}  # params key -> trials that proposed a known point

    def propose(self, seen: set[str]) -> dict[str, Any] | None:
        size = self.space.size
        if size is not None and len(seen) >= size:
            return None
        for _ in range(RANDOM_ATTEMPTS):
            trial = self.study.ask(self.distributions)
            params: dict[str, Any] = {}
            for axis in self.space.axes:
                params.update(axis.assign(_decode(axis, trial.params[axis.name])))
            key = params_key(params)
            if key not in seen:
                self._pending = trial
                return params
            # a repeat: the sampler learns the known point's outcome once it is known
            self._waiting.setdefault(key, []).append(trial)
        return None

    def bind(self, cand: Candidate) -> None:
        """The candidate made of the last proposed point."""
        self._trials[cand.index] = self._pending

    def observe(self, cand: Candidate, result: Result) -> None:
        trials = [t for t in (self._trials.pop(cand.index, None),) if t is not None]
        trials += self._waiting.pop(cand.key(), [])
        for trial in trials:
            self._tell(trial, result)

    def _tell(self, trial: Any, result: Result) -> None:
        import optuna

        usable = result.status == "ok" or (result.status == "rejected" and not self.cmaes)
        if not usable:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        trial.set_user_attr(CONSTRAINTS_ATTR, list(result.violations))
        if self.set_constraint:
            for i, amount in enumerate(result.violations):
                trial.set_constraint(f"c{i}", amount)
        if len(self.objectives) == 1:
            values: Any = result.objective
        else:
            values = [float(result.metrics[o.name]) for o in self.objectives]
        self.study.tell(trial, values)


def _constraints_of(trial: Any) -> list[float]:
    return list(trial.user_attrs.get(CONSTRAINTS_ATTR, [1.0]))  # a trial without them counts as breaking


def _distribution(axis: Axis) -> Any:
    from optuna.distributions import FloatDistribution, IntDistribution

    if axis.values is not None:
        return IntDistribution(0, len(axis.values) - 1)
    assert axis.low is not None and axis.high is not None
    if axis.integer:
        if axis.step is not None:
            high = int(axis.low) + (axis.count() - 1) * int(axis.step)  # the last lattice point
            return IntDistribution(int(axis.low), high, step=int(axis.step))
        return IntDistribution(int(axis.low), int(axis.high), log=axis.log)
    if axis.step is not None:
        high = axis.point(axis.count() - 1)
        return FloatDistribution(axis.low, high, step=axis.step)
    return FloatDistribution(axis.low, axis.high, log=axis.log)


def _decode(axis: Axis, value: Any) -> Any:
    if axis.values is not None:
        return axis.values[int(value)]
    return int(value) if axis.integer else float(value)


def make_strategy(name: str, space: Space, seed: int, objective: Objective, pareto: tuple[Objective, ...],
                  n_constraints: int) -> Grid | RandomDraws | OptunaSampler:
    if name == "grid":
        return Grid(space, seed)
    if name == "random":
        return RandomDraws(space, seed)
    objectives = pareto if name == "nsga2" else (objective,)
    return OptunaSampler(name, space, seed, objectives, n_constraints)


__all__ = ["Grid", "OptunaSampler", "RandomDraws", "STRATEGIES", "make_strategy"]
