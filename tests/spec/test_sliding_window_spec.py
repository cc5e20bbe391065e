"""backbone.sliding_window and sliding_window_layers: which layers each pattern windows, and
errors that name the field, what is wrong and the valid choices."""

from pathlib import Path

import pytest

import vlac
from vlac.spec import SpecError

DENSE = Path(__file__).resolve().parents[2] / "examples" / "dense_text_1b.yaml"


def _backbone(*overrides):
    return vlac.load(DENSE, ["backbone.layers=6", *overrides], profile="tiny").backbone


@pytest.mark.parametrize("pattern,layers", [
    ("all", (0, 1, 2, 3, 4, 5)),
    ("global_every:2", (0, 2, 4)),  # Gemma 2: local, global, local, ...
    ("global_every:3", (0, 1, 3, 4)),  # Gemma 3 writes N=6: five local layers per global one
    ("from:4", (4, 5)),  # Qwen2: max_window_layers = 4
    ("[5,1,1]", (1, 5)),
])
def test_patterns_name_the_windowed_layers(pattern, layers):
    bb = _backbone("backbone.sliding_window=16", f"backbone.sliding_window_layers={pattern}")
    assert bb.window_layers() == layers
    assert [bb.window_at(i) for i in range(6)] == [16 if i in layers else 0 for i in range(6)]


def test_no_window_by_default():
    bb = _backbone()
    assert bb.sliding_window is None and bb.window_layers() == () and bb.window_at(0) == 0


@pytest.mark.parametrize("overrides,says", [
    (["backbone.sliding_window=8", "backbone.sliding_window_layers=every:2"],
     ["backbone.sliding_window_layers", "'every:2' is not a layer pattern", '"global_every:N"', '"from:K"']),
    (["backbone.sliding_window_layers=from:2"], ["backbone.sliding_window_layers", "sliding_window is null"]),
    (["backbone.sliding_window=8", "backbone.sliding_window_layers=[2,6,9]"],
     ["backbone.sliding_window_layers", "[6, 9] are outside the 6 layers", "0..5"]),
    (["backbone.sliding_window=0"], ["backbone.sliding_window", "greater than or equal to 1"]),
])
def test_errors_name_the_field_the_problem_and_the_choices(overrides, says):
    with pytest.raises(SpecError) as err:
        _backbone(*overrides)
    for text in says:
        assert text in str(err.value)
