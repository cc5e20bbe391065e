"""Cutting a pipeline's layer chain into stages: contiguous runs of per-layer weights, either
minimising the heaviest run or cutting at equal shares of the running total (interleaved
schedules, where what a rank sums over its chunks matters).

Both run per candidate stage split in the search's fast path (hundreds per architecture) on a
few dozen weights, so they work on plain Python floats: numpy's per-call overhead exceeded the
work. Running totals are left-to-right float sums (itertools.accumulate, as numpy's cumsum),
the same bits as adding one weight at a time."""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate


def balanced_partition(weights: list[float], parts: int) -> list[tuple[int, int]]:
    """Split `weights` into `parts` non-empty contiguous runs minimising the heaviest run
    (bisection on the bottleneck with a greedy check, which is exact for this problem), then
    cut greedily at that bottleneck. Returns [start, end) index pairs."""
    n = len(weights)
    if parts == 1 or parts == n:  # one run, or one item per run: no bottleneck to search for
        return [(0, n)] if parts == 1 else [(i, i + 1) for i in range(n)]
    lo, hi = max(weights), sum(weights)

    def fits_in(limit: float) -> bool:
        """Whether the greedy fill (a run takes the next item unless that would exceed `limit`
        and the run already holds weight) needs at most `parts` runs; it stops counting past
        `parts`."""
        count, acc = 1, 0.0
        for x in weights:
            if acc + x > limit and acc > 0:
                count, acc = count + 1, 0.0
                if count > parts:
                    return False
            acc += x
        return True

    for _ in range(60):
        mid = (lo + hi) / 2
        if fits_in(mid):
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-9 * hi:
            break
    out, start, acc = [], 0, 0.0
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
    prefix = list(accumulate(weights, initial=0.0))
    n, total = len(weights), prefix[-1]
    cuts, prev = [], 0
    for k in range(1, parts):
        target = total * k / parts
        lo, hi = prev + 1, n - (parts - k)  # leave at least one item per remaining run
        j = min(max(bisect_left(prefix, target), lo), hi)
        if j > lo and abs(prefix[j - 1] - target) <= abs(prefix[j] - target):
            j -= 1
        cuts.append(j)
        prev = j
    edges = [0] + cuts + [n]
    return list(zip(edges[:-1], edges[1:]))
