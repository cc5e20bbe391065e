"""The emitted program on a real Slurm cluster (localhost, .ci/slurm.sh): submitted through
submitit's Slurm executor with 2 tasks (CPU, gloo), it completes; preempted while running, it
checkpoints, is requeued by Slurm and resumes from its checkpoint to the end.

Skipped when Slurm is not installed, unless VLAC_REQUIRE_SLURM=1 (CI), which makes it a failure.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

import vlac
from slurm_cluster import preempt, release_requeued  # tests/ on sys.path: tests/vlac/conftest.py


pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
JOB_TIMEOUT_S = 240


def _program(tmp: Path, name: str, steps: int) -> Path:
    exp = vlac.load(TINY, [f"train.steps={steps}", "train.checkpoint_every=10", "launcher.kind=slurm"])
    return vlac.emit(exp, vlac.plan(exp), tmp / name)


def _report(job, cluster) -> str:
    out = subprocess.run(["scontrol", "show", "job", job.job_id], capture_output=True, text=True).stdout
    logs = []
    for sub in getattr(job, "_sub_jobs", None) or [job]:
        logs.append(f"--- task {sub.task_id} stderr:\n{(sub.stderr() or '')[-3000:]}")
    return "\n".join([out, *logs, cluster.logs_tail(10)])


def _wait(predicate, timeout_s, what, report=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{report()}", pytrace=False)


def _events(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_the_program_runs_on_two_slurm_tasks(slurm_cluster, tmp_path):
    prog = _program(tmp_path, "p", steps=6)
    job = vlac.submit(prog, executor="slurm", folder=tmp_path / "submitit", gpus_per_node=0, cpus_per_task=1)
    _wait(lambda: job.done(force_check=True), JOB_TIMEOUT_S, f"job {job.job_id}", lambda: _report(job, slurm_cluster))
    results = job.results()
    assert len(results) == 2 and results[0]["losses"] == results[1]["losses"]
    assert len(results[0]["losses"]) == 6 and results[0]["layout"] == "dp_replicate 2"
    assert results[0]["param_sha256"] == results[1]["param_sha256"]


def test_a_preempted_program_is_requeued_and_resumes_from_its_checkpoint(slurm_cluster, tmp_path):
    steps = 60
    prog = _program(tmp_path, "p", steps=steps)
    run = prog / "run"
    job = vlac.submit(prog, executor="slurm", folder=tmp_path / "submitit", gpus_per_node=0, cpus_per_task=1)
    report = lambda: _report(job, slurm_cluster)  # noqa: E731
    _wait(lambda: any(e.get("step", -1) >= 3 for e in _events(run) if e["event"] == "step"), JOB_TIMEOUT_S,
          "step 4 of the first run", report)
    preempt(job, 30, report)  # submitit's preemption: SIGTERM, then USR2 to every task
    released_at = [None]

    def restarted() -> bool:
        if any(e["event"] == "resumed" for e in _events(run)):
            return True
        state = subprocess.run(["squeue", "-h", "-j", job.job_id, "-o", "%T"], capture_output=True, text=True).stdout
        # a requeued job waits for its BeginTime: release it (again if it did not start in 15 s)
        if state.strip() == "PENDING" and (released_at[0] is None or time.monotonic() - released_at[0] > 15):
            release_requeued(job.job_id)
            released_at[0] = time.monotonic()
        return False

    _wait(restarted, JOB_TIMEOUT_S, "the requeued job to resume", report)
    _wait(lambda: job.done(force_check=True) and job.paths.result_pickle.exists(), JOB_TIMEOUT_S,
          "the requeued job to finish", report)
    result = job.results()[0]
    events = _events(run)
    preempted = next(e for e in events if e["event"] == "preempted")["step"]
    resumed = next(e for e in events if e["event"] == "resumed")
    assert resumed["step"] == preempted and preempted < steps
    assert result["steps"] == list(range(preempted, steps))
    logged = [e["step"] for e in events if e["event"] == "step"]
    assert sorted(set(logged)) == list(range(steps))  # no step skipped
