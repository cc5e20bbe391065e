"""balanced_partition (early exit from the greedy check, no search for one run or one item per
run) cuts exactly where the plain bisection over a full greedy count does, for uneven, equal,
integer and zero weights."""

import random

import pytest

from vlac.compiler.partition import balanced_partition


def _plain(weights, parts):
    """The definition: bisection on the bottleneck, each check counting every run, then the
    greedy cut at the bottleneck."""
    lo, hi = max(weights), sum(weights)

    def runs_needed(limit):
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
        if i > start and (acc + x > hi or n - i == left_parts - 1) and left_parts > 1:
            out.append((start, i))
            start, acc = i, 0.0
        acc += x
    out.append((start, n))
    return out


FAMILIES = {
    "uneven": lambda rng, n: [rng.uniform(0.1, 10.0) for _ in range(n)],
    "equal": lambda rng, n: [3.0] * n,
    "heavy first": lambda rng, n: [50.0] + [1.0] * (n - 1),
    "zeros": lambda rng, n: [float(rng.randint(0, 4)) for _ in range(n - 1)] + [1.0],  # a run may hold no weight yet
    "flops": lambda rng, n: [rng.uniform(1e11, 1e13) for _ in range(n)],  # the sizes the stage split passes
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", range(4))
def test_balanced_cuts_match_the_plain_bisection(family, seed):
    rng = random.Random(seed)
    weights = FAMILIES[family](rng, rng.randint(1, 40))
    for parts in range(1, len(weights) + 1):
        assert balanced_partition(weights, parts) == _plain(weights, parts), (weights, parts)
