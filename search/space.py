"""The space of an architecture search: which spec fields vary, over which values.

A space maps dotted spec paths to values:

    moe.experts: [8, 16, 32, 64]              # a list: one of these (grid axis or uniform choice)
    moe.top_k: {choice: [1, 2]}               # the same, spelt out
    optimizer.lr: {range: [1.0e-4, 1.0e-3], log: true}   # random search: log-uniform float
    backbone.layers: {range: [12, 36], step: 4}          # ints from 12 to 36 step 4 (grid or random)
    backbone.hidden,backbone.heads: [[2048, 16], [2560, 20]]   # tied fields vary together
    cluster.nodes: 32                         # a single value: set for every candidate

Candidates are plain `{path: value}` mappings applied to the base spec before validation, so any
field of the spec can be searched and every candidate is checked by the same rules as a spec file.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import random
import types
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from pydantic import BaseModel

from vlac.spec import Experiment


class SearchError(ValueError):
    """A bad search definition (space, objective, constraint, strategy): names the entry, what
    is wrong and how to fix it. Failures of single candidates are results, never this."""


INT64 = 2**63  # a candidate's figures are stored as 64-bit integers (results.parquet); no spec field is larger
# A grid evaluates every point: a million at the fast path's 245 candidates/s on this 2-core
# machine (benchmarks/results/search.json, random search) is over an hour, and each point's
# params are kept. Beyond it, sample the space (random or an Optuna strategy, with a budget).
MAX_GRID_POINTS = 1_000_000


def check_integers(node: Any, where: str) -> None:
    """Refuse an integer in the space that no spec field can hold and no results column can store
    (pyarrow would overflow writing results.parquet, after the whole search ran)."""
    if isinstance(node, bool):
        return
    if isinstance(node, int) and not -INT64 <= node < INT64:
        raise SearchError(f"{where}: an integer of {node.bit_length()} bits is out of range; a space value is a "
                          f"spec field's value, at most 2**63 - 1 in size")
    items = (node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, (list, tuple))
             else ())
    for key, value in items:
        check_integers(value, f"{where}.{key}" if isinstance(node, Mapping) else f"{where}[{key}]")


@dataclass(frozen=True)
class Candidate:
    """One point of the space: `params` maps dotted spec paths to the values it sets."""

    index: int
    params: dict[str, Any]

    def key(self) -> str:
        return params_key(self.params)

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items())


def params_key(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Axis:
    """One entry of the space. Discrete axes hold `values` (tuples for tied paths); ranges hold
    `low`, `high` and optionally `step` (a lattice) or `log` (log-uniform sampling)."""

    paths: tuple[str, ...]
    values: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    integer: bool = False

    @property
    def name(self) -> str:
        return ",".join(self.paths)

    @property
    def discrete(self) -> bool:
        return self.values is not None or self.step is not None

    def count(self) -> int:
        """How many values a discrete axis has, without listing them (a range's lattice may be
        far larger than memory: random sampling draws from it by index)."""
        if self.values is not None:
            return len(self.values)
        if self.step is None:
            raise SearchError(f"space: {self.name!r} is a continuous range; a grid needs discrete values: give a "
                              f"list, add `step`, or use strategy random")
        assert self.low is not None and self.high is not None
        return _lattice_count(self.low, self.high, self.step)

    def point(self, i: int) -> Any:
        """The i-th value of a discrete axis (0 <= i < count())."""
        if self.values is not None:
            return self.values[i]
        assert self.low is not None and self.step is not None
        p = self.low + i * self.step
        return int(round(p)) if self.integer else p

    def points(self) -> tuple[Any, ...]:
        """Every value of a discrete axis, in order (a grid's axis: Space.check_grid bounds it)."""
        return tuple(self.point(i) for i in range(self.count()))

    def sample(self, rng: random.Random) -> Any:
        if self.discrete:
            return self.point(rng.randrange(self.count()))
        assert self.low is not None and self.high is not None
        if self.integer and not self.log:
            return rng.randint(int(self.low), int(self.high))
        if self.log:
            x = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            x = rng.uniform(self.low, self.high)
        return int(round(x)) if self.integer else x

    def assign(self, value: Any) -> dict[str, Any]:
        if len(self.paths) == 1:
            return {self.paths[0]: value}
        return dict(zip(self.paths, value))


class Space:
    def __init__(self, axes: list[Axis]):
        if not axes:
            raise SearchError("space: it is empty; give at least one field, e.g. moe.experts: [8, 16]")
        self.axes = tuple(axes)
        seen: set[str] = set()
        for a in self.axes:
            for p in a.paths:
                if p in seen:
                    raise SearchError(f"space: {p!r} appears in two entries; give each field one entry")
                seen.add(p)
        self.paths = tuple(p for a in self.axes for p in a.paths)

    @classmethod
    def parse(cls, mapping: Mapping[str, Any] | Space) -> Space:
        if isinstance(mapping, Space):
            return mapping
        if not isinstance(mapping, Mapping):
            raise SearchError(f"space: expected a mapping of dotted spec paths to values, got {type(mapping).__name__}")
        check_integers(mapping, "space")
        return cls([_axis(str(k), v) for k, v in mapping.items()])

    @property
    def discrete(self) -> bool:
        return all(a.discrete for a in self.axes)

    @property
    def size(self) -> int | None:
        """Points in the grid (None when an axis is continuous)."""
        if not self.discrete:
            return None
        return math.prod(a.count() for a in self.axes)

    def check_grid(self) -> None:
        """Refuse, before anything is evaluated, a space a grid cannot walk: a continuous range,
        or more than MAX_GRID_POINTS points (listing a range's lattice of 10^12 values exhausts
        memory long before the first candidate, and no search evaluates that many)."""
        counts = {a.name: a.count() for a in self.axes}  # raises naming a continuous entry
        size = math.prod(counts.values())
        if size > MAX_GRID_POINTS:
            largest = max(counts, key=counts.__getitem__)
            raise SearchError(
                f"space: a grid would have {size:,} points, more than the {MAX_GRID_POINTS:,} a grid search walks "
                f"({', '.join(f'{k}: {n:,} values' for k, n in counts.items())}); {largest!r} has the most: give it a "
                f"larger step or fewer values, or use strategy random (or tpe, cmaes, nsga2) with a budget, which "
                f"draw from ranges without listing them")

    def grid(self) -> Iterator[dict[str, Any]]:
        """Every combination, the last axis varying fastest."""
        self.check_grid()
        for combo in itertools.product(*(a.points() for a in self.axes)):
            params: dict[str, Any] = {}
            for axis, value in zip(self.axes, combo):
                params.update(axis.assign(value))
            yield params

    def sample(self, rng: random.Random) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for axis in self.axes:
            params.update(axis.assign(axis.sample(rng)))
        return params

    def check_paths(self) -> None:
        """Every path must name a field of the spec (values are checked per candidate)."""
        for axis in self.axes:
            for path in axis.paths:
                problem = spec_path_problem(path)
                if problem:
                    raise SearchError(f"space: {path!r}: {problem}")
            if axis.values is None and not axis.integer and _whole_numbers_only(spec_path_types(axis.paths[0])):
                # else every candidate drawn would be refused one by one ('expected an integer')
                step = f", step {axis.step}" if axis.step is not None else ""
                fix = f", step: {max(1, round(axis.step))}" if axis.step is not None else ""
                raise SearchError(f"space: {axis.name!r} holds whole numbers, but its range [{axis.low}, {axis.high}]"
                                  f"{step} has a decimal number, so it would draw decimals that every candidate "
                                  f"refuses; write integers, e.g. range: [{math.ceil(axis.low)}, "
                                  f"{math.floor(axis.high)}]{fix}")

    def largest(self, path: str) -> float | None:
        """The largest number `path` takes in this space: a list's largest number, a range's upper
        end; None when no entry sets it or none of its values is a number. The fast path
        prepares for it (the deepest candidate's legal layouts serve every shallower one)."""
        for a in self.axes:
            if path not in a.paths:
                continue
            if a.values is None:
                return a.high
            j = a.paths.index(path)
            values = [v[j] if len(a.paths) > 1 else v for v in a.values]
            return max((x for x in values if isinstance(x, (int, float)) and not isinstance(x, bool)), default=None)
        return None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for a in self.axes:
            if a.values is not None:
                out[a.name] = [list(v) if isinstance(v, tuple) else v for v in a.values]
            else:
                out[a.name] = {k: v for k, v in (("range", [a.low, a.high]), ("step", a.step), ("log", a.log or None))
                               if v is not None}
        return out


def _axis(key: str, spec: Any) -> Axis:
    paths = tuple(p.strip() for p in key.split(","))
    if not all(paths) or any(" " in p for p in paths):
        raise SearchError(f"space: {key!r} is not a dotted spec path (or comma-separated paths); e.g. moe.experts")
    tied = len(paths) > 1
    if isinstance(spec, Mapping):
        keys = set(spec)
        if "choice" in spec:
            if keys - {"choice"}:
                raise SearchError(f"space: {key!r}: `choice` takes no other keys, got {sorted(keys - {'choice'})}")
            spec = spec["choice"]
        elif "range" in spec:
            if tied:
                raise SearchError(f"space: {key!r}: tied fields take a list of value lists, not a range")
            return _range(key, paths, spec)
        else:
            raise SearchError(f"space: {key!r}: a mapping must hold `choice: [...]` or `range: [low, high]` "
                              f"(with optional `step` or `log: true`), got keys {sorted(keys)}")
    values = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not values:
        raise SearchError(f"space: {key!r} has no values; give at least one")
    if tied:
        bad = [v for v in values if not isinstance(v, (list, tuple)) or len(v) != len(paths)]
        if bad:
            raise SearchError(f"space: {key!r} ties {len(paths)} fields, so each value must be a list of "
                              f"{len(paths)} values; {bad[0]!r} is not")
        values = [tuple(v) for v in values]
    if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
        raise SearchError(f"space: {key!r} lists a value twice; list each value once")
    return Axis(paths, values=tuple(values))


def _number(key: str, what: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise SearchError(f"space: {key!r}: {what} must be a number, got {x!r}")
    return x


def _range(key: str, paths: tuple[str, ...], spec: Mapping[str, Any]) -> Axis:
    extra = set(spec) - {"range", "step", "log"}
    if extra:
        raise SearchError(f"space: {key!r}: unknown range keys {sorted(extra)}; valid: range, step, log")
    bounds = spec["range"]
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        raise SearchError(f"space: {key!r}: range must be [low, high], got {bounds!r}")
    low, high = (_number(key, "range bounds", b) for b in bounds)
    if low > high:
        raise SearchError(f"space: {key!r}: range low {low} exceeds high {high}; write [low, high]")
    step = spec.get("step")
    log = bool(spec.get("log", False))
    if step is not None:
        step = _number(key, "step", step)
        if step <= 0:
            raise SearchError(f"space: {key!r}: step must be positive, got {step}")
        if log:
            raise SearchError(f"space: {key!r}: give either step or log, not both")
    if log and low <= 0:
        raise SearchError(f"space: {key!r}: a log range needs low > 0, got {low}")
    integer = all(isinstance(x, int) for x in (low, high, step if step is not None else 1))
    if step is not None and not math.isfinite((high - low) / step):
        raise SearchError(f"space: {key!r}: step {step} is too small for the range [{low}, {high}] (its values "
                          f"cannot be counted); give a larger step, or drop step for a continuous range")
    return Axis(paths, low=low, high=high, step=step, log=log, integer=integer)


def _lattice_count(low: float, high: float, step: float) -> int:
    """Values low, low + step, ... up to high (a hair of rounding tolerated at the top)."""
    return int(math.floor((high - low) / step + 1e-9)) + 1


# ---- checking that a dotted path names a spec field ---------------------------------------------
def spec_path_problem(path: str, root: type[BaseModel] = Experiment) -> str:
    """Why `path` names no field of the spec ('' when it does). Mapping-valued sections (e.g.
    modalities.NAME) accept any key; a union accepts a field any of its members has."""
    return _walk(path, root)[0]


def spec_path_types(path: str, root: type[BaseModel] = Experiment) -> list[Any]:
    """The types the field at `path` may hold (a union's members; empty when no field)."""
    problem, leaf = _walk(path, root)
    return [] if problem else leaf


def _walk(path: str, root: type[BaseModel]) -> tuple[str, list[Any]]:
    types_: list[Any] = [root]
    walked: list[str] = []
    for part in path.split("."):
        models = [t for t in types_ if isinstance(t, type) and issubclass(t, BaseModel)]
        maps = [t for t in types_ if typing.get_origin(t) is dict]
        nxt: list[Any] = []
        for m in models:
            if part in m.model_fields:
                nxt += _members(m.model_fields[part].annotation)
        for d in maps:
            nxt += _members(typing.get_args(d)[1])
        if not nxt:
            where = ".".join(walked) or "the spec"
            fields = sorted({f for m in models for f in m.model_fields})
            if not fields:
                return f"{where} is a value, not a section; it has no field {part!r}", []
            close = difflib.get_close_matches(part, fields, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            return f"{where} has no field {part!r}; {hint}valid fields: {', '.join(fields)}", []
        types_ = nxt
        walked.append(part)
    return "", types_


def _whole_numbers_only(types_: list[Any]) -> bool:
    """A field whose every type is an integer (bool aside): a decimal value is refused."""
    numbers = [t for t in types_ if t is not type(None)]
    return bool(numbers) and all(t is int for t in numbers)


def _members(tp: Any) -> list[Any]:
    """The concrete types a field annotation may hold (Optional, Union and Annotated unwrapped)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _members(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [m for a in typing.get_args(tp) for m in _members(a)]
    return [tp]


__all__ = ["MAX_GRID_POINTS", "Axis", "Candidate", "SearchError", "Space", "params_key", "spec_path_problem", "spec_path_types"]
