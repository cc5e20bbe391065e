"""`--set` reaches into lists: data.mixture[0].weight=2 and data.mixture.0.weight=2 change that
entry; a wrong index names the override and the valid range."""

from pathlib import Path

import pytest

from vlac.spec import SpecError, apply_overrides, load

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"


@pytest.mark.parametrize("key", ["data.mixture[0].weight", "data.mixture.0.weight"])
def test_an_index_sets_one_entry_of_a_list(key):
    assert load(TINY, [f"{key}=2.5"]).data.mixture[0].weight == 2.5


def test_indices_nest_and_leave_the_other_entries_alone():
    data = {"a": [{"b": [1, 2, 3]}, {"b": [4]}]}
    out = apply_overrides(data, ["a[0].b[2]=9", "a.1.b.0=7"])
    assert out == {"a": [{"b": [1, 2, 9]}, {"b": [7]}]} and data["a"][0]["b"] == [1, 2, 3]


def test_a_digit_key_of_a_mapping_stays_a_key():
    assert apply_overrides({"m": {"0": 1}}, ["m.0=2"]) == {"m": {"0": 2}}


def _problem(overrides, source=TINY):
    with pytest.raises(SpecError) as e:
        load(source, overrides) if source == TINY else apply_overrides(source, overrides)
    (issue,) = e.value.issues
    return issue


def test_an_index_past_the_end_names_the_override_and_the_valid_range():
    issue = _problem(["data.mixture[3].weight=2"], {"data": {"mixture": [{}, {}]}})
    assert issue.origin == "--set data.mixture[3].weight=2" and issue.path == "data.mixture"
    assert "has 2 entries" in issue.message and "from 0 to 1" in issue.message


@pytest.mark.parametrize("override,path,needle", [
    ("data.mixture.first.weight=2", "data.mixture", "is a list"),
    ("data.mixture[x].weight=2", "data.mixture", "is not a list index"),
    ("data.mixture[-1].weight=2", "data.mixture", "is not a list index"),
    ("backbone[0].layers=2", "backbone", "is a section, not a list"),
    ("train.seq_len[0]=2", "train.seq_len", "not a section or a list"),
])
def test_bad_indices_are_refused_with_the_field_named(override, path, needle):
    issue = _problem([override])
    assert issue.path == path and needle in issue.message and issue.origin == f"--set {override}"


def test_a_bad_value_in_a_list_entry_is_blamed_on_the_override():
    issue = _problem(["data.mixture[0].weight=-1"])
    assert issue.path == "data.mixture[0].weight" and issue.origin == "--set data.mixture[0].weight=-1"
