"""equal_share_partition (one searchsorted for every cut) cuts exactly where the per-cut
definition does: at the item boundary whose running total is nearest to k/parts of the whole,
ties to the earlier boundary, every run non-empty."""

import random

import numpy as np
import pytest

from vlac.compiler.partition import equal_share_partition


def _per_cut(weights, parts):
    """The definition, one cut at a time with numpy scalars."""
    prefix = np.concatenate([[0.0], np.cumsum(weights)])
    n, total, cuts, prev = len(weights), prefix[-1], [], 0
    for k in range(1, parts):
        lo, hi = prev + 1, n - (parts - k)
        j = int(np.clip(np.searchsorted(prefix, total * k / parts), lo, hi))
        if j > lo and abs(prefix[j - 1] - total * k / parts) <= abs(prefix[j] - total * k / parts):
            j -= 1
        cuts.append(j)
        prev = j
    edges = [0, *cuts, n]
    return list(zip(edges[:-1], edges[1:]))


@pytest.mark.parametrize("seed", range(20))
def test_equal_share_cuts_match_the_per_cut_definition(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 40)
    # uneven weights, equal weights (ties between boundaries) and a heavy first/last item
    weights = rng.choice([
        [rng.uniform(0.1, 10.0) for _ in range(n)],
        [3.0] * n,
        [50.0] + [1.0] * (n - 1),
        [1.0] * (n - 1) + [50.0],
    ])
    for parts in range(1, len(weights) + 1):
        got = equal_share_partition(weights, parts)
        assert got == _per_cut(weights, parts)
        assert len(got) == parts and all(b > a for a, b in got)
        assert got[0][0] == 0 and got[-1][1] == len(weights)
