"""The Pareto front of a search, without near-duplicates.

A result is on the exact front when no other ok result is at least as good on every Pareto axis
and better on one. Many fronts then hold runs of candidates whose figures differ in the fourth
digit (the same model one layer deeper, a wider model at the same throughput): a user reading
the front wants one of each. So the front is thinned with an epsilon per objective, relative:
walking the exact front in order of the first axis, a result is dropped when a result already
kept is within `epsilon[i] * |kept value|` of it on every axis i. The kept one is the first in
that order (the better on the first axis; ties by candidate index), so the thinning is
deterministic. `epsilon = 0` keeps the exact front.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import numpy as np

T = TypeVar("T")
DEFAULT_EPSILON = 0.005  # 0.5 % on each axis: below what the cost model can tell apart


def pareto_front(items: Sequence[T], keys: Callable[[T], tuple[float, ...]],
                 epsilon: Sequence[float] = ()) -> list[T]:
    """The items no other item dominates, thinned by `epsilon` (one relative tolerance per axis).
    `keys(item)`: the item's values, each to be minimised; items keep their given order on ties."""
    if not items:  # every candidate rejected: numpy cannot shape an empty array into rows of -1
        return []
    values = [tuple(keys(it)) for it in items]
    order = sorted(range(len(items)), key=lambda i: (values[i], i))
    v = np.array(values, dtype=float).reshape(len(values), -1)
    front: list[int] = []
    for i in order:  # vectorised over the others: thousands of results stay fast
        dominated = np.all(v <= v[i], axis=1) & np.any(v < v[i], axis=1)
        if not dominated.any():
            front.append(i)
    eps = tuple(epsilon) or (0.0,) * (len(values[0]) if values else 0)
    kept: list[int] = []
    for i in front:
        if any(all(abs(a - b) <= e * abs(b) for a, b, e in zip(values[i], values[k], eps)) for k in kept):
            continue
        kept.append(i)
    return [items[i] for i in kept]


__all__ = ["DEFAULT_EPSILON", "pareto_front"]
