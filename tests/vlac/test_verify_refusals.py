"""`vlac verify` refuses what it cannot check before running anything, and counts a NaN as a
difference: degree 0, bad tolerances, layouts the model cannot take, a loss that turns NaN."""

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlac.cli import app
from vlac.verify import SINGLE, LayoutSyntaxError, Report, Run, parse_layout

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"  # 4 heads, 2 kv heads, 2 layers, 4 experts


def _cli(*args):
    return CliRunner().invoke(app, ["verify", str(TINY), *args])


def _no_run(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a layout ran although the command should have refused up front")
    monkeypatch.setattr("vlac.verify.run_layout", refuse)


@pytest.mark.parametrize("text", ["dp0", "tp0", "dp2xpp0", "fsdp0"])
def test_degree_zero_is_a_layout_error(text):
    with pytest.raises(LayoutSyntaxError, match="degree 0"):
        parse_layout(text)


def test_dp0_on_the_command_line_is_a_vlac_error(monkeypatch):
    _no_run(monkeypatch)
    r = _cli("--layouts", "dp0")
    assert r.exit_code == 2, r.output
    assert "degree 0" in r.output and "ZeroDivisionError" not in r.output


@pytest.mark.parametrize("tol", ["-1e-4", "0", "nan", "inf", "-inf"])
def test_bad_tolerance_refused(monkeypatch, tol):
    _no_run(monkeypatch)
    r = _cli("--layouts", "dp2", "--tolerance", tol)
    assert r.exit_code == 2, r.output
    assert "--tolerance" in r.output and "finite" in r.output


@pytest.mark.parametrize("layouts, reason", [
    ("tp8", "backbone.heads = 4"),
    ("dp2,pp4", "backbone.layers = 2"),
    ("ep8", "moe.experts = 4"),
    ("tp3", "backbone.heads = 4"),
])
def test_layout_that_cannot_apply_is_refused_up_front(monkeypatch, layouts, reason):
    _no_run(monkeypatch)
    r = _cli("--layouts", layouts)
    assert r.exit_code == 2, r.output
    assert reason in " ".join(r.output.split())


def test_ep_without_moe_is_refused(monkeypatch):
    _no_run(monkeypatch)
    r = _cli("--layouts", "ep2", "--set", "moe=null")
    assert r.exit_code == 2, r.output
    assert "ep2 needs a mixture of experts" in " ".join(r.output.split())


def _report(layout_losses, ref_losses=(2.0, 1.5, 1.0)):
    ref = Run(SINGLE, 1, losses=list(ref_losses), grad_norms=[1.0] * len(ref_losses))
    run = Run(parse_layout("dp2"), 2, losses=list(layout_losses), grad_norms=[1.0] * len(layout_losses))
    return Report("", 1, len(ref_losses), 1e-4, ref, [run]), run


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_loss_that_turns_nan_or_inf_fails(bad):
    report, run = _report([2.0, 1.5, bad])
    assert not report.passed(run) and not report.ok
    assert run.max_rel(report.reference)[0] == math.inf


def test_nan_in_both_is_still_a_failure():
    report, run = _report([2.0, math.nan, 1.0], ref_losses=(2.0, math.nan, 1.0))
    assert not report.ok


def test_equal_losses_pass():  # the comparison can also succeed
    report, run = _report([2.0, 1.5, 1.0])
    assert report.ok
