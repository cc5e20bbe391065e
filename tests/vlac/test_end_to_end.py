"""Tiny example -> emit -> submit on submitit's local executor with 2 tasks (gloo, DP=2)."""

import json
from pathlib import Path

import pytest

import vlac

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"


@pytest.mark.slow
def test_two_rank_local_training_learns_checkpoints_and_stays_in_sync(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    exp = vlac.load(TINY)
    plan = vlac.plan(exp)
    assert (plan.best.layout.dp, plan.best.layout.tp) == (2, 1)
    program = vlac.emit(exp, plan, tmp_path / "program")
    job = vlac.submit(program, executor="local", folder=tmp_path / "submitit")
    results = job.results()  # one result per task
    assert len(results) == 2
    losses = results[0]["losses"]
    assert len(losses) == 20 == exp.train.total_steps
    assert losses[-1] < 0.7 * losses[0], losses
    assert results[0]["losses"] == results[1]["losses"]  # both ranks report the global loss
    assert results[0]["param_sha256"] == results[1]["param_sha256"]  # replicas identical
    ckpts = sorted(p.name for p in (program / "run" / "checkpoints").iterdir())
    assert ckpts == ["step_00000010", "step_00000020"]
    lines = [json.loads(x) for x in (program / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["event"] == "step"]
    assert len(steps) == 20 and set(steps[0]["modality_loss"]) == {"text", "image", "action"}
    assert len(steps[0]["expert_load"]) == 2  # one load histogram per MoE layer


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    exp = vlac.load(TINY)
    program = vlac.emit(exp, vlac.plan(exp), tmp_path / "program")
    first = vlac.submit(program, executor="local", folder=tmp_path / "s1", max_steps=10).results()[0]
    second = vlac.submit(program, executor="local", folder=tmp_path / "s2").results()[0]
    full = vlac.submit(vlac.emit(exp, vlac.plan(exp), tmp_path / "again"), executor="local",
                       folder=tmp_path / "s3").results()[0]
    assert len(first["losses"]) == 10 and len(second["losses"]) == 10
    assert first["losses"] + second["losses"] == pytest.approx(full["losses"], rel=1e-5)
    assert second["param_sha256"] == full["param_sha256"]
