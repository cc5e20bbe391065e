"""Hostile spec values found by fuzzing: each refusal names the field and its fix, and the fix it
offers ("e.g. ...") is itself accepted."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlac.spec.base import check_identifier, check_name


def _example(check, value):
    with pytest.raises(ValueError) as e:
        check(value)
    return re.search(r"e\.g\. (\S+)$", str(e.value)).group(1)


@pytest.mark.parametrize("check,value", [(check_identifier, "téxt"), (check_identifier, "漢字"),
                                         (check_identifier, "x" * 150), (check_name, "a...b"),
                                         (check_name, "a....b"), (check_name, "x" * 150 + "!")])
def test_the_offered_name_is_accepted(check, value):
    suggestion = _example(check, value)
    assert check(suggestion) == suggestion


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.sampled_from([check_name, check_identifier]), st.text(max_size=150))
def test_every_refused_name_offers_an_accepted_one(check, value):
    try:
        check(value)
    except ValueError:
        suggestion = _example(check, value)
        assert check(suggestion) == suggestion
