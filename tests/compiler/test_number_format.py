"""The one SI formatter of the reports: prefixes, units, and each report's taste below 1000."""

import pytest

from vlac.compiler.number_format import si


@pytest.mark.parametrize("x, unit, expect", [
    (2.5e9, "FLOP", "2.50 GFLOP"),
    (1000, "", "1.00 k"),
    (999, "", "999"),
    (999.6, "B", "1000 B"),  # rounds below the prefix threshold; no prefix is invented
    (-3.2e6, "", "-3.20 M"),
    (7.1e16, "FLOP", "71.00 PFLOP"),  # nothing above P: the mantissa grows
    (0, "FLOP", "0 FLOP"),
    (0.25, "", "0"),
])
def test_defaults_are_two_decimals_and_whole_numbers_below_1000(x, unit, expect):
    assert si(x, unit) == expect


def test_the_small_format_only_changes_numbers_below_1000():
    assert si(0.25, small=".3g") == "0.25"
    assert si(12.5, "B", small=".3g") == "12.5 B"
    assert si(12_500, "B", small=".3g") == si(12_500, "B") == "12.50 kB"


def test_compact_form_has_no_separator_and_three_significant_digits():
    compact = dict(scaled=".3g", small=".3g", sep="")
    assert si(12_500, **compact) == "12.5k"
    assert si(3e12, **compact) == "3T"
    assert si(0.125, **compact) == "0.125"
    assert si(42, "s", **compact) == "42s"


def test_the_reports_format_through_it():
    from vlac.report import _si as report_si
    from vlac.search.picture import si as pareto_si

    assert report_si(12.5, "B") == "12.5 B" and report_si(2.5e9, "FLOP") == "2.50 GFLOP"
    assert pareto_si(12_500) == "12.5k" and pareto_si(0.5) == "0.5"
