"""A range over a whole-number field written with a decimal bound or step is refused when the
search is set up, naming the entry and an integer range, instead of yielding only candidates that
each fail validation ('expected an integer')."""

from pathlib import Path

import pytest

from vlac.search import Search
from vlac.search.space import SearchError, spec_path_types

FLAGSHIP = Path(__file__).resolve().parents[2] / "examples" / "vla_10b_moe_h100.yaml"


@pytest.mark.parametrize("entry, fix", [
    ({"range": [8, 12.5], "step": 1.5}, "range: [8, 12], step: 2"),
    ({"range": [8.0, 12.0]}, "range: [8, 12]"),
    ({"range": [8, 32], "step": 0.5}, "range: [8, 32], step: 1"),
])
def test_a_decimal_range_over_an_integer_field_is_refused_with_an_integer_one(entry, fix):
    with pytest.raises(SearchError) as e:
        Search(FLAGSHIP, {"backbone.layers": entry}, profile="tiny", strategy="random", budget=2)
    assert "'backbone.layers' holds whole numbers" in str(e.value) and fix in str(e.value)


def test_integer_ranges_and_decimal_ranges_of_decimal_fields_still_run():
    s = Search(FLAGSHIP, {"backbone.layers": {"range": [4, 6]}}, profile="tiny", strategy="random", budget=2, seed=1)
    s.run(workers=1, progress=False)
    assert all(r.status != "invalid" for r in s.results.values())
    # a float field takes a decimal range
    Search(FLAGSHIP, {"optimizer.lr": {"range": [1e-4, 3e-4]}}, profile="tiny", strategy="random", budget=2)


def test_field_types_unwrap_optionals_and_unknown_paths_have_none():
    assert spec_path_types("backbone.layers") == [int]
    assert float in spec_path_types("optimizer.lr")
    assert spec_path_types("backbone.nope") == []
