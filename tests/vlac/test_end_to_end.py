"""Tiny example -> emit -> submit on submitit's local executor with 2 tasks (gloo, DP=2)."""

import json
from pathlib import Path

import pytest

import vlac

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """(experiment, program, rank results) of the plan's whole 20-step run, made once: the first
    test checks it, the second resumes against it."""
    tmp = tmp_path_factory.mktemp("e2e")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # the local executor's tasks inherit it
        exp = vlac.load(TINY)
        plan = vlac.plan(exp)
        assert (plan.best.layout.dp, plan.best.layout.tp) == (2, 1)
        program = vlac.emit(exp, plan, tmp / "program")
        results = vlac.submit(program, executor="local", folder=tmp / "submitit").results()  # one result per task
    return exp, program, results


@pytest.mark.slow
def test_two_rank_local_training_learns_checkpoints_and_stays_in_sync(full_run):
    exp, program, results = full_run
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
def test_resume_continues_from_the_last_checkpoint(full_run, tmp_path, monkeypatch):
    """10 steps, then the rest from the step-10 checkpoint: the uninterrupted run's losses and
    final weights (that run is the first test's)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    exp, _, full_results = full_run
    full = full_results[0]
    program = vlac.emit(exp, vlac.plan(exp), tmp_path / "program")
    first = vlac.submit(program, executor="local", folder=tmp_path / "s1", max_steps=10).results()[0]
    second = vlac.submit(program, executor="local", folder=tmp_path / "s2").results()[0]
    assert len(first["losses"]) == 10 and len(second["losses"]) == 10
    assert first["losses"] + second["losses"] == pytest.approx(full["losses"], rel=1e-5)
    assert second["param_sha256"] == full["param_sha256"]
