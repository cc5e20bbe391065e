"""Durations are whole seconds: a fractional one is refused with the whole number to write, not
cut short (launcher.time_limit: 90.7 was 90 s, "0.5s" was 0 and then 'must be > 0'); a Slurm
time-out in minutes rounds a time limit up, never down."""

import pytest

from vlac.spec import SpecError, load
from vlac.spec.units import parse_duration
from vlac.submission import timeout_minutes


@pytest.mark.parametrize("value, seconds", [(90, 90), (3.0, 3), ("1.5min", 90), ("2.5h", 9000), ("1d12h", 129600),
                                            ("02:00:00", 7200), ("0.25m", 15)])
def test_whole_durations_read_as_before(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value, write", [(90.7, "write 91"), ("1.51min", "write 91"), ("0.5s", "write 1"),
                                          ("0.001h", "write 4")])
def test_a_fractional_second_is_refused_with_the_whole_number_to_write(value, write):
    with pytest.raises(ValueError) as e:
        parse_duration(value)
    assert "whole number of seconds" in str(e.value) and write in str(e.value)


def test_the_spec_names_the_field_of_a_fractional_time_limit():
    with pytest.raises(SpecError) as e:
        load({"name": "x", "launcher": {"time_limit": 90.7}, "backbone": {"hidden": 64, "layers": 2, "heads": 4}})
    text = str(e.value)
    assert "launcher.time_limit" in text and "write 91" in text


@pytest.mark.parametrize("seconds, minutes", [(60, 1), (61, 2), (90, 2), (3600, 60), (1, 1)])
def test_a_time_limit_becomes_whole_minutes_rounded_up(seconds, minutes):
    assert timeout_minutes(seconds) == minutes
