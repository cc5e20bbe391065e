"""The session's shared `vlac verify` runs (tests/vlac/verify_helpers.py): a run asked for again
is answered from the first, never across specs, layouts or micro-batch sizes, and never from a
failed or shorter run."""

from pathlib import Path

import pytest

import vlac
import verify_helpers
from vlac.verify import SINGLE, Run, parse_layout

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"


@pytest.fixture
def runs(monkeypatch):
    """A reusing run_layout over a fake one that records what it was asked to run."""
    monkeypatch.setattr(verify_helpers, "_RUNS", {})
    asked = []

    def run_layout(exp, layout, mb, steps, workdir, timeout_s=600.0):
        asked.append((exp.name, layout.name, mb, steps))
        if layout.name == "pp2":
            return Run(layout, 2, error="RuntimeError: boom")
        return Run(layout, layout.world, losses=[float(s) for s in range(steps)], grad_norms=[1.0 + s for s in range(steps)])

    return verify_helpers.reusing_runs(run_layout), asked


def test_a_run_asked_for_again_is_the_first_runs_prefix(runs, tmp_path):
    run_layout, asked = runs
    exp = vlac.load(TINY)
    first = run_layout(exp, SINGLE, 8, 6, tmp_path)
    again = run_layout(exp, SINGLE, 8, 3, tmp_path)
    assert asked == [("tiny-vla", "single", 8, 6)]
    assert again.losses == first.losses[:3] and again.grad_norms == first.grad_norms[:3]
    assert first.losses == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # the kept run is not cut by the prefix served


def test_other_inputs_run_again(runs, tmp_path):
    run_layout, asked = runs
    exp = vlac.load(TINY)
    run_layout(exp, SINGLE, 8, 3, tmp_path)
    run_layout(exp, SINGLE, 4, 3, tmp_path)  # another micro-batch size
    run_layout(vlac.load(TINY, ["backbone.layers=4"]), SINGLE, 8, 3, tmp_path)  # another spec
    run_layout(exp, parse_layout("dp2"), 8, 3, tmp_path)  # another layout
    run_layout(exp, SINGLE, 8, 5, tmp_path)  # longer than the run kept: runs, and is kept instead
    run_layout(exp, SINGLE, 8, 4, tmp_path)
    assert [a[1:] for a in asked] == [("single", 8, 3), ("single", 4, 3), ("single", 8, 3), ("dp2", 8, 3),
                                      ("single", 8, 5)]


def test_a_failed_run_is_not_kept(runs, tmp_path):
    run_layout, asked = runs
    exp = vlac.load(TINY)
    assert run_layout(exp, parse_layout("pp2"), 8, 2, tmp_path).error
    assert run_layout(exp, parse_layout("pp2"), 8, 2, tmp_path).error
    assert len(asked) == 2
