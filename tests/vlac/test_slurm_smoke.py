"""Smoke tests against a real single-node Slurm cluster on localhost (.ci/slurm.sh).

Skipped (with the reason) when Slurm is not installed or the cluster does not start, unless
VLAC_REQUIRE_SLURM=1 (CI), which turns every reason not to run into a failure. The cluster starts
once per session (about 5-15 s) in a pytest temporary directory, whose log/ keeps every daemon's
log; it is stopped, daemons and all, at the end of the session. Set up once with `bash .ci/slurm.sh install` (root), then:

    VLAC_REQUIRE_SLURM=1 python -m pytest tests/vlac/test_slurm_smoke.py -m slurm

Every wait is bounded, so a broken cluster fails in well under 3 minutes instead of hanging.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

from slurm_cluster import LocalSlurm, preempt, release_requeued  # tests/ on sys.path: tests/vlac/conftest.py


pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# The job functions below live in this test module, which the job's interpreter cannot import
# (pytest put tests/vlac on *its* sys.path, not the job's): pickle them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

JOB_TIMEOUT_S = 60  # one job, submit to result (takes 2-15 s here)
STATE_TIMEOUT_S = 30  # accounting (sacct) catching up with a finished job


# ------------------------------------------------------------------------------------ helpers
def _slurm(*args: str, check: bool = True) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _queue_state(job_id: str) -> str:
    """The job's state in slurmctld (squeue), '' once it left the queue."""
    lines = _slurm("squeue", "-h", "-j", job_id, "-o", "%T", check=False).splitlines()
    return lines[0].strip() if lines else ""


def _job_report(job, cluster: LocalSlurm) -> str:
    parts = [f"job {job.job_id}: scontrol show job:"]
    parts.append(_slurm("scontrol", "show", "job", job.job_id, check=False))
    parts.append("sacct --duplicates:")
    parts.append(_slurm("sacct", "--duplicates", "-j", job.job_id, "-P",
                        "-o", "JobID,State,ExitCode,Start,End,Reason", check=False))
    for sub in getattr(job, "_sub_jobs", None) or [job]:
        for name in ("stdout", "stderr"):
            text = getattr(sub, name)()
            if text:
                parts.append(f"--- task {sub.task_id} {name} (last 3000 chars):\n{text[-3000:]}")
    parts.append(cluster.logs_tail(10))
    return "\n".join(parts)


def _wait(predicate, timeout_s: float, what: str, on_timeout=lambda: "", period_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}\n{on_timeout()}", pytrace=False)
        time.sleep(period_s)


def _wait_result_file(job, timeout_s: float, what: str, report) -> None:
    """Wait for the job's result pickle; fail fast when the job left the queue without one."""
    gone_since = [None]

    def have_result() -> bool:
        if job.paths.result_pickle.exists():
            return True
        if _queue_state(job.job_id):
            gone_since[0] = None
        elif gone_since[0] is None:
            gone_since[0] = time.monotonic()
        elif time.monotonic() - gone_since[0] > 10:
            pytest.fail(f"job {job.job_id} left the queue without a result ({what})\n{report()}",
                        pytrace=False)
        return False

    _wait(have_result, timeout_s, what, report)


def _wait_final_state(job, expected: str, cluster: LocalSlurm) -> None:
    """submitit's own view of the job (it polls sacct, i.e. slurmdbd) reaches `expected`."""
    seen = []

    def reached():
        state = job.watcher.get_state(job.job_id, mode="force")
        if not seen or seen[-1] != state:
            seen.append(state)
        return state == expected

    _wait(reached, STATE_TIMEOUT_S, f"job {job.job_id} to be {expected} in sacct",
          lambda: f"states seen: {seen}\n{_job_report(job, cluster)}")
    assert job.state == expected


# ------------------------------------------------------------------------------------ jobs
def rank_and_world_size():
    env = submitit.JobEnvironment()
    return env.global_rank, env.num_tasks


class StepCounter(submitit.helpers.Checkpointable):
    """Counts to `total_steps`, one step per `period_s`, saving the counter in `workdir/step` and
    resuming from it. Every start appends "<SLURM_RESTART_COUNT> <first step>" to starts.log, every
    step "<SLURM_RESTART_COUNT> <step>" to steps.log. Checkpointable: on preemption submitit calls
    `checkpoint` (which resubmits the same arguments) and requeues the job."""

    def __call__(self, workdir: str, total_steps: int, period_s: float):
        wd = Path(workdir)
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        counter = wd / "step"
        log = wd / "steps.log"
        # steps.log is the single source of truth: one short appended line per step is the
        # commit point, so a kill at any instant (requeue ends with SIGKILL, which cannot be
        # blocked) never separates "step done" from "step recorded"; `step` only mirrors it for
        # the test to watch.
        lines = log.read_text().split() if log.exists() else []
        first = int(lines[-1]) if lines else 0
        with open(wd / "starts.log", "a") as f:
            f.write(f"{restart} {first}\n")
        step = first
        while step < total_steps:
            time.sleep(period_s)
            step += 1
            with open(log, "a") as f:
                f.write(f"{restart} {step}\n")
            tmp = wd / "step.tmp"
            tmp.write_text(str(step))
            os.replace(tmp, counter)
        return {"restart_count": restart, "resumed_from": first, "final_step": step}


def _executor(folder: Path, cluster: LocalSlurm, **params) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(slurm_partition=cluster.partition, nodes=1, cpus_per_task=1, **params)
    return executor


# ------------------------------------------------------------------------------------ tests
def test_two_tasks_report_rank_and_world_size(slurm_cluster, tmp_path):
    executor = _executor(tmp_path / "submitit", slurm_cluster, tasks_per_node=2, timeout_min=5,
                         name="vlac-smoke-ranks")
    job = executor.submit(rank_and_world_size)
    _wait(lambda: job.done(force_check=True), JOB_TIMEOUT_S, f"job {job.job_id} to finish",
          lambda: _job_report(job, slurm_cluster), period_s=1.0)
    assert job.results() == [(0, 2), (1, 2)], _job_report(job, slurm_cluster)
    _wait_final_state(job, "COMPLETED", slurm_cluster)


def test_checkpointable_job_is_requeued_and_resumes(slurm_cluster, tmp_path):
    workdir = tmp_path / "shared"
    workdir.mkdir()
    total_steps, period_s, interrupt_after = 16, 0.5, 3
    # timeout_min=20: submitit treats USR2 as a time-out (not a preemption) when the job ran more
    # than min(0.8 * timeout, timeout - 10 min); with 20 min this is a preemption.
    executor = _executor(tmp_path / "submitit", slurm_cluster, tasks_per_node=1, timeout_min=20,
                         name="vlac-smoke-requeue")
    job = executor.submit(StepCounter(), str(workdir), total_steps, period_s)
    report = lambda: _job_report(job, slurm_cluster)  # noqa: E731
    counter = workdir / "step"

    def saved_step() -> int:
        try:
            return int(counter.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    _wait(lambda: saved_step() >= interrupt_after, JOB_TIMEOUT_S,
          f"job {job.job_id} to save {interrupt_after} steps", report)
    preempt(job, 30, report)

    # A requeued job is held for the credential lifetime (120 s) by a BeginTime; release it.
    seen_states = []
    released_at = [None]
    gone_since = [None]

    def restarted() -> bool:
        starts = (workdir / "starts.log").read_text().splitlines()
        if len(starts) >= 2 or job.paths.result_pickle.exists():
            return True
        state = _queue_state(job.job_id)
        if not seen_states or seen_states[-1] != state:
            seen_states.append(state)
        gone_since[0] = None if state else (gone_since[0] or time.monotonic())
        if gone_since[0] is not None and time.monotonic() - gone_since[0] > 5:
            pytest.fail(f"job {job.job_id} left the queue instead of being requeued "
                        f"(states seen: {seen_states})\n{report()}", pytrace=False)
        if state == "PENDING" and (released_at[0] is None or time.monotonic() - released_at[0] > 15):
            release_requeued(job.job_id)
            released_at[0] = time.monotonic()
        return False

    _wait(restarted, JOB_TIMEOUT_S, f"job {job.job_id} to be requeued and start again",
          lambda: f"squeue states seen: {seen_states}\n{report()}")
    _wait_result_file(job, JOB_TIMEOUT_S, f"requeued job {job.job_id} to finish", report)

    result = job.result()
    starts = [tuple(map(int, line.split())) for line in (workdir / "starts.log").read_text().splitlines()]
    steps = [tuple(map(int, line.split())) for line in (workdir / "steps.log").read_text().splitlines()]
    # It ran twice: once from scratch, then (SLURM_RESTART_COUNT=1) from the saved counter.
    assert len(starts) == 2, (starts, report())
    (run0, first0), (run1, first1) = starts
    assert (run0, first0) == (0, 0), starts
    assert run1 == 1 and first1 >= interrupt_after, starts
    assert result == {"restart_count": 1, "resumed_from": first1, "final_step": total_steps}
    # Steps continue where the first run stopped: no step redone, none skipped.
    assert [s for _, s in steps] == list(range(1, total_steps + 1)), steps
    assert [r for r, s in steps if s <= first1] == [0] * first1
    assert [r for r, s in steps if s > first1] == [1] * (total_steps - first1)
    restarts = _slurm("scontrol", "show", "job", job.job_id, check=False)
    assert "Restarts=1" in restarts or not restarts, restarts  # gone from slurmctld after MinJobAge
    _wait_final_state(job, "COMPLETED", slurm_cluster)
