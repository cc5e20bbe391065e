"""A Python spec (or a mapping given to vlac.api.load) holding a value that cannot be copied is
a SpecError naming its place; before, copying the mapping raised TypeError, which the CLI
reported as an internal error and `vlac prepare` as a traceback (found by fuzzing spec files)."""

import threading

import pytest

from vlac.api import load
from vlac.spec import SpecError


@pytest.mark.parametrize("value,kind", [((i for i in range(3)), "a generator"), (threading.Lock(), "a lock")])
def test_an_uncopyable_value_in_a_mapping_is_named(value, kind):
    with pytest.raises(SpecError) as e:
        load({"name": "x", "data": {"mixture": [value]}})
    assert "data.mixture[0]" in str(e.value) and f"{kind} cannot be a spec value" in str(e.value)


def test_an_uncopyable_value_in_a_python_spec_file_is_named(tmp_path):
    spec = tmp_path / "gen.py"
    spec.write_text("experiment = {'name': 'x', 'modalities': {'text': (i for i in range(3))}}\n")
    with pytest.raises(SpecError) as e:
        load(spec)
    assert "modalities.text: a generator cannot be a spec value" in str(e.value)
    assert str(spec) in str(e.value)
