"""The suite guards itself: a default per-test timeout, a longer one for slow tests, and no
wall-clock assertions in tests (timing goals live in benchmarks/)."""

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_default_timeout_is_configured():
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert 0 < int(ini["timeout"]) <= 600 and ini["timeout_method"] == "thread"


def test_this_test_carries_the_default_timeout(request, pytestconfig):
    assert request.node.get_closest_marker("timeout") is None  # not slow: the ini default applies
    assert int(pytestconfig.getini("timeout")) > 0


@pytest.mark.slow
def test_slow_tests_get_the_longer_timeout(request):
    marker = request.node.get_closest_marker("timeout")  # added by tests/conftest.py
    assert marker is not None and marker.args[0] > int(request.config.getini("timeout"))


TIMING = re.compile(r"assert[^\n]*\b(elapsed|perf_counter|time\.time|monotonic|took|seconds)\b[^\n]*[<>]")


def test_no_wall_clock_assertions_in_tests():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "tests").rglob("*.py") if p.name != Path(__file__).name
            for i, line in enumerate(p.read_text().splitlines(), 1) if TIMING.search(line)]
    assert not hits, f"wall-clock assertions (move the goal to benchmarks/): {hits}"
