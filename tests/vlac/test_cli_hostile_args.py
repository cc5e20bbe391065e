"""Hostile command-line arguments found by fuzzing `vlac` (seeded; see the commits that added
each case): every one is refused with exit 2 and a message naming the argument, never a
traceback, an "internal error" or Python's own wording."""

from pathlib import Path

import pytest

from cli_checks import refused_cleanly

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "examples" / "tiny_vla.yaml")


@pytest.mark.parametrize("pin,says", [
    ("tp=²", "pin tp='²': give a positive integer"),  # str.isdigit() takes it, int() did not
    ("tp=" + "9" * 5000, "--pin tp: a number of 5,000 digits"),  # beyond int()'s 4,300-digit limit
    ("pp=" + "9" * 19, "--pin pp: a number of 19 digits"),
])
def test_a_pin_value_that_is_no_whole_number_names_the_pin(pin, says):
    r = refused_cleanly(["compile", TINY, "--json", "--pin", pin], says)
    assert "invalid literal" not in r.stderr and "set_int_max_str_digits" not in r.stderr
