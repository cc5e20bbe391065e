"""Hostile arguments to the Python search API get the CLI's field-naming errors at construction,
never a TypeError or an overflow in pyarrow after the whole search ran."""

from pathlib import Path

import pytest

from vlac.search import Search, SearchError
from vlac.search.front import DEFAULT_EPSILON

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"


@pytest.mark.parametrize("space, named", [
    ({"moe.experts": [2, 2**63]}, "space.moe.experts[1]"),
    ({"moe.experts": [2, -2**63 - 1]}, "space.moe.experts[1]"),
    ({"moe.experts": {"choice": [2**64]}}, "space.moe.experts.choice[0]"),
    ({"backbone.layers": {"range": [1, 2**70]}}, "space.backbone.layers.range[1]"),
    ({"moe.experts,moe.top_k": [[2, 1], [4, 2**63]]}, "space.moe.experts,moe.top_k[1][1]"),
])
def test_space_integer_beyond_int64_is_refused_naming_the_key(space, named):
    with pytest.raises(SearchError) as e:
        Search(TINY, space, strategy="random", budget=4)
    assert named in str(e.value) and "2**63 - 1" in str(e.value)


def test_int64_edges_are_accepted():
    Search(TINY, {"moe.experts": [2, 2**63 - 1, -2**63]})  # values are checked per candidate, not here


def test_candidate_integer_beyond_int64_is_refused():
    s = Search(TINY, {"moe.experts": [2, 4]})
    with pytest.raises(SearchError, match=r"candidate\.moe\.experts"):
        s.candidate({"moe.experts": 2**63})


def test_pareto_epsilon_none_takes_the_default():
    assert Search(TINY, {"moe.experts": [2, 4]}, pareto_epsilon=None).pareto_epsilon == (DEFAULT_EPSILON,) * 2


@pytest.mark.parametrize("eps", [object(), "ab", {"a": 1, "b": 2}, b"xy", 1j, [0.1, None], (0.1, "x")])
def test_pareto_epsilon_of_a_wrong_type_names_the_setting(eps):
    with pytest.raises(SearchError, match="pareto_epsilon: give one non-negative relative tolerance"):
        Search(TINY, {"moe.experts": [2, 4]}, pareto_epsilon=eps)
