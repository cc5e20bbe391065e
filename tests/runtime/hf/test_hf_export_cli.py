"""The whole path: a spec with `backbone: {from_hf}` -> vlac emit -> the program trains from the
checkpoint -> `vlac export` -> transformers loads the trained weights."""

import json
import runpy

import pytest
import torch
from hf_models import experiment, reference_logits, save_tiny
from typer.testing import CliRunner

import vlac
from vlac.cli import app

IDS = torch.tensor([[5, 17, 3, 90, 42, 0, 7, 64]])
PINS = {"dp": 1, "tp": 1, "pp": 1, "ep": 1, "cp": 1, "zero": 0}


def _trained_model(exp, step_dir):
    from vlac.runtime.checkpoint import Checkpointer
    from vlac.runtime.model import build_model
    from vlac.runtime.optim import build_optimizer

    model = build_model(exp, seed=123)
    Checkpointer(step_dir.parent, 1, True).load(step_dir, model, build_optimizer(model, exp))
    return model.eval()


@pytest.mark.slow
def test_program_fine_tunes_from_the_checkpoint_and_exports(tmp_path):
    src = save_tiny("qwen3", tmp_path / "qwen3-tiny")
    exp = experiment(src, modalities={"text": {"kind": "text", "tokens": 10},
                                      "action": {"kind": "action", "dims": 2, "bins": 16}},
                     data={"mixture": [{"name": "t", "modalities": ["text", "action"]}]})
    program = vlac.emit(exp, vlac.plan(exp, pin=PINS), tmp_path / "program")
    runpy.run_path(str(program / "train.py"))["main"](max_steps=2)
    events = [json.loads(line) for line in (program / "run" / "metrics.jsonl").read_text().splitlines()]
    loaded = [e for e in events if e.get("event") == "pretrained"]
    assert loaded and loaded[0]["family"] == "qwen3" and loaded[0]["new_vocab_rows"] > 0

    result = CliRunner().invoke(app, ["export", str(program), "--hf", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "as a qwen3 checkpoint" in result.output
    step_dir = sorted((program / "run" / "checkpoints").glob("step_*"))[-1]
    model = _trained_model(exp, step_dir)
    offset, size = exp.vocab_layout().range_of("text").offset, exp.modalities["text"].vocab_size
    with torch.no_grad():
        ours = model({"tokens": IDS + offset})["logits"][..., offset:offset + size]
    exported = reference_logits(tmp_path / "out", IDS)[..., :size]
    torch.testing.assert_close(exported, ours, atol=1e-5, rtol=0)
    assert (exported - reference_logits(src, IDS)).abs().max() > 1e-4  # trained: not the starting weights


def test_export_command_errors_name_the_fix(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(tmp_path / "nowhere"), "--hf", str(tmp_path / "out")])
    assert result.exit_code == 2 and "is not a folder" in result.output
    (tmp_path / "run").mkdir()
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "--hf", str(tmp_path / "out")])
    assert result.exit_code == 2 and "has the run saved a checkpoint?" in result.output
