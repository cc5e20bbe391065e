"""The runtime's limits at the command line: `vlac compile` shows a pinned layout the runtime
cannot run and why; `vlac emit` refuses it (exit 2, the limit named), and the emitted program's
runtime refuses a plan.json edited into one."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

import vlac
from vlac.cli import app
from vlac.runtime.parallel.mesh import LayoutError
from vlac.runtime.parallel.support import check_runnable

ROOT = Path(__file__).resolve().parents[2]
DENSE = str(ROOT / "examples" / "dense_text_1b.yaml")
ZB_FSDP3 = "dp=2,pp=2,zero=3,schedule=zero_bubble"
runner = CliRunner()


def test_compile_marks_and_emit_refuses_a_layout_the_runtime_cannot_run(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    # the zero-bubble schedule defers weight gradients that ZeRO-3 has resharded: not run
    shown = runner.invoke(app, ["compile", DENSE, "--pin", ZB_FSDP3])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "not run by vlac's runtime" in text and "zero-bubble schedule with ZeRO-3" in text
    refused = runner.invoke(app, ["emit", DENSE, "--pin", ZB_FSDP3, "-o", str(tmp_path / "prog")])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "cannot run the plan" in refused.output and "--pin zero=2, or --pin schedule=1f1b" in " ".join(
        refused.output.split())
    assert not (tmp_path / "prog").exists()
    fine = runner.invoke(app, ["compile", DENSE])
    assert fine.exit_code == 0 and "runs as planned" in fine.output


def test_the_runtime_refuses_the_same_plan_before_building_a_mesh():
    exp = vlac.load(DENSE)
    plan = vlac.plan(exp, pin={"dp": 2, "pp": 2, "zero": 3, "schedule": "zero_bubble"}).to_json()["plan"]
    with pytest.raises(LayoutError, match="zero-bubble schedule with ZeRO-3.*--pin zero=2, or --pin schedule=1f1b"):
        check_runnable(exp, plan)
    check_runnable(exp, vlac.plan(exp, pin={"tp": 2, "pp": 2}).to_json()["plan"])  # tied embeddings over tp x pp run
    check_runnable(exp, vlac.plan(exp, pin={"cp": 2, "pp": 2}).to_json()["plan"])  # runs since cp composes with pp
