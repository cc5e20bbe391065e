"""Cutting a pipeline's layer chain into stages: contiguous runs of per-layer weights, either
minimising the heaviest run or cutting at equal shares of the running total (interleaved
schedules, where what a rank sums over its chunks matters)."""

from __future__ import annotations

import numpy as np


def balanced_partition(weights: list[float], parts: int) -> list[tuple[int, int]]:
    """Split `weights` into `parts` non-empty contiguous runs minimising the heaviest run
    (bisection on the bottleneck with a greedy check, which is exact for this problem), then
    cut greedily at that bottleneck. Returns [start, end) index pairs."""
    lo, hi = max(weights), sum(weights)

    def runs_needed(limit: float) -> int:
        count, acc = 1, 0.0
        for x in weights:
            if acc + x > limit and acc > 0:
                count, acc = count + 1, 0.0
            acc += x
        return count

    for _ in range(60):
        mid = (lo + hi) / 2
        if runs_needed(mid) <= parts:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-9 * hi:
            break
    out, start, acc, n = [], 0, 0.0, len(weights)
    for i, x in enumerate(weights):
        left_parts = parts - len(out)
        # cut when the run would exceed the bottleneck, or when the remaining items are exactly
        # enough to give every remaining run one
        must = n - i == left_parts - 1
        if i > start and (acc + x > hi or must) and left_parts > 1:
            out.append((start, i))
            start, acc = i, 0.0
        acc += x
    out.append((start, n))
    return out


def equal_share_partition(weights: list[float], parts: int) -> list[tuple[int, int]]:
    """Cut `weights` into `parts` non-empty contiguous runs where the running total is nearest
    to k/parts of the whole. Returns [start, end) index pairs."""
    prefix_array = np.concatenate([[0.0], np.cumsum(weights)])
    n, total = len(weights), float(prefix_array[-1])
    targets = [total * k / parts for k in range(1, parts)]
    # one searchsorted for every cut, then plain floats: per-cut numpy scalar calls dominated
    # this, which runs per candidate stage split
    found = np.searchsorted(prefix_array, targets).tolist()
    prefix = prefix_array.tolist()
    cuts, prev = [], 0
    for k, (target, j) in enumerate(zip(targets, found), start=1):
        lo, hi = prev + 1, n - (parts - k)  # leave at least one item per remaining run
        j = min(max(j, lo), hi)
        if j > lo and abs(prefix[j - 1] - target) <= abs(prefix[j] - target):
            j -= 1
        cuts.append(j)
        prev = j
    edges = [0] + cuts + [n]
    return list(zip(edges[:-1], edges[1:]))
