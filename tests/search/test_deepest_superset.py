"""One superset of legal layouts for a whole search: the fast path enumerates its supersets at
least as deep as the space's deepest candidate (Space.largest('backbone.layers')), and every
shallower depth's layouts are still the planner's own enumeration."""

import math
from pathlib import Path

import pytest

import vlac
from vlac.compiler.search_space import Limits, enumerate_space
from vlac.search import Search
from vlac.search.fast_plan import DepthSpaces, _same_rows
from vlac.search.space import Space

FLAGSHIP = Path(__file__).resolve().parents[2] / "examples" / "vla_10b_moe_h100.yaml"


def test_largest_reads_lists_tied_entries_and_ranges():
    assert Space.parse({"backbone.layers": [16, 32, 24]}).largest("backbone.layers") == 32
    tied = Space.parse({"backbone.hidden,backbone.layers": [[2048, 40], [4096, 12]], "moe.top_k": [1, 2]})
    assert tied.largest("backbone.layers") == 40 and tied.largest("backbone.hidden") == 4096
    assert Space.parse({"backbone.layers": {"range": [8, 112], "step": 1}}).largest("backbone.layers") == 112
    assert Space.parse({"moe.experts": [8]}).largest("backbone.layers") is None
    # values a candidate will refuse are no depth to prepare for
    assert Space.parse({"backbone.layers": ["deep", True]}).largest("backbone.layers") is None


def test_a_grid_of_depths_shares_one_superset_and_keeps_each_depths_layouts():
    exp = vlac.load(FLAGSHIP)
    spaces = DepthSpaces(deepest=32)
    for depth in (16, 24, 32, 9):
        lim = Limits.of(exp, exp.cluster, depth)
        ours = spaces.get(lim, None, {}).layouts()
        theirs = enumerate_space(lim, {})
        assert len(ours) == len(theirs) and _same_rows(ours, theirs), depth
    assert len(spaces.supersets) == 1  # without the hint: 16 and 32, two
    # a candidate deeper than the hint still gets a superset of its own depth
    lim = Limits.of(exp, exp.cluster, 40)
    assert _same_rows(spaces.get(lim, None, {}).layouts(), enumerate_space(lim, {}))
    assert len(spaces.supersets) == 2


@pytest.mark.parametrize("deepest", [None, 0, -3, math.nan, math.inf, 1e300])
def test_a_hint_that_is_no_depth_is_ignored_or_capped(deepest):
    spaces = DepthSpaces(deepest=deepest)
    assert 0 <= spaces.deepest <= 1 << 16


def test_the_search_passes_its_deepest_candidate_to_the_fast_path():
    s = Search(FLAGSHIP, {"backbone.layers": [4, 6]}, profile="tiny")
    assert s.evaluator.fast_path.spaces.deepest == 6
    assert Search(FLAGSHIP, {"moe.top_k": [1, 2]}, profile="tiny").evaluator.fast_path.spaces.deepest == 0
