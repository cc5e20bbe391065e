"""A search space whose grid is too large to walk is refused when the search is set up, naming the
field, the grid's size and the fixes; random sampling draws from a huge range without listing
it. Each check runs in a child process with its address space capped and a timeout: listing a
range of 10^12 values (as the grid did before the cap) then fails or times out there instead of
exhausting this machine's memory or hanging the suite."""

import json
import subprocess
import sys
import textwrap

import pytest

from vlac.search.space import MAX_GRID_POINTS, SearchError, Space

CHILD_MEMORY = 3 << 30  # bytes: importing vlac.search (torch included) needs about 0.5 GiB
CHILD_TIMEOUT_S = 120  # the child's imports take ~5 s on a busy 2-core machine


def run_child(body: str) -> dict:
    """Run `body` (which sets `out`, a JSON-able dict) in a child capped at CHILD_MEMORY."""
    script = textwrap.dedent("""
        import json, resource
        resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem}))
        from vlac.search.space import SearchError, Space
        from vlac.search.strategies import Grid, RandomDraws
        out = {{}}
    """).format(mem=CHILD_MEMORY) + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_huge_grid_is_refused_at_once_naming_the_field_and_the_fixes():
    out = run_child("""
        space = Space.parse({"moe.top_k": [1, 2], "backbone.layers": {"range": [1, 10**12], "step": 1}})
        try:
            Grid(space, 0)
            out["error"] = None
        except SearchError as e:
            out["error"] = str(e)
    """)
    error = out["error"]  # refused before listing: the child's memory cap would have failed it
    assert error is not None
    assert "'backbone.layers'" in error and "2,000,000,000,000 points" in error  # the field, the size
    assert "larger step" in error and "fewer values" in error and "strategy random" in error  # the fixes


def test_random_sampling_draws_from_a_huge_range_without_listing_it():
    out = run_child("""
        space = Space.parse({"backbone.layers": {"range": [1, 10**12], "step": 1},
                             "optimizer.lr": {"range": [1.0e-4, 1.0e-3], "step": 1.0e-15}})
        strategy = RandomDraws(space, seed=0)
        out["draws"] = [strategy.propose(set()) for _ in range(100)]
        out["size"] = space.size
    """)
    assert out["size"] >= 10**12 * 899_999_999_999  # counted, never listed (the memory cap holds)
    layers = [d["backbone.layers"] for d in out["draws"]]
    assert all(1 <= n <= 10**12 and isinstance(n, int) for n in layers) and len(set(layers)) == 100
    assert all(1.0e-4 <= d["optimizer.lr"] <= 1.0e-3 for d in out["draws"])


def test_a_grid_at_the_limit_is_walked_and_one_past_it_is_not():
    at_limit = Space.parse({"backbone.layers": {"range": [1, MAX_GRID_POINTS], "step": 1}})
    assert at_limit.size == MAX_GRID_POINTS
    at_limit.check_grid()
    past = Space.parse({"backbone.layers": {"range": [1, MAX_GRID_POINTS + 1], "step": 1}})
    with pytest.raises(SearchError, match="1,000,001 points"):
        past.check_grid()
    with pytest.raises(SearchError, match="1,000,001 points"):
        next(past.grid())


def test_lattice_values_are_those_listed_before():
    # sampling by index gives the values the listed lattice held: the same seed, the same points
    axis = Space.parse({"optimizer.lr": {"range": [1.0e-4, 1.0e-3], "step": 1.0e-4}}).axes[0]
    assert axis.points() == tuple(1.0e-4 + i * 1.0e-4 for i in range(10))
    axis = Space.parse({"backbone.layers": {"range": [12, 36], "step": 4}}).axes[0]
    assert axis.points() == (12, 16, 20, 24, 28, 32, 36) and axis.count() == 7


def test_a_step_too_small_to_count_is_refused():
    with pytest.raises(SearchError, match="too small"):
        Space.parse({"optimizer.lr": {"range": [0.0, 1.0e300], "step": 1.0e-300}})
