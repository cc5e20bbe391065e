"""Faults on local processes (submitit's local executor, gloo): a rank killed mid-run, a
preemption signal, and resuming a checkpoint under another layout. The resumed run must give the
losses of an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

import vlac
from vlac.spec.system import Cluster
from vlac.verify import parse_layout

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
STEPS = 20
MB = 4

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def program(tmp: Path, name: str, layout: str = "dp2", checkpoint_every: int = 5) -> Path:
    exp = vlac.load(TINY, [f"train.checkpoint_every={checkpoint_every}", "train.keep_last=2"])
    lay = parse_layout(layout) if layout != "single" else parse_layout("dp1")
    cluster = Cluster.model_validate({"preset": "h100-sxm", "nodes": 1, "gpus_per_node": lay.world})
    return vlac.emit(exp, vlac.plan(exp, cluster=cluster, pin=lay.pins(MB)), tmp / name)


def steps_logged(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def task_pid(job, rank: int) -> int | None:
    """The pid of task `rank` of a local job (its environment names the job and the rank)."""
    want = {f"SUBMITIT_LOCAL_JOB_ID={job.job_id}".encode(), f"SUBMITIT_LOCAL_GLOBALID={rank}".encode()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if want <= env:
            return int(entry.name)
    return None


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted dp2 run: losses of all 20 steps and the final parameters."""
    tmp = tmp_path_factory.mktemp("reference")
    os.environ["OMP_NUM_THREADS"] = "1"
    result = vlac.submit(program(tmp, "p"), executor="local", folder=tmp / "s").results()[0]
    assert len(result["losses"]) == STEPS
    return result


def test_a_killed_rank_is_survived_by_resuming_from_the_last_checkpoint(tmp_path, reference):
    prog = program(tmp_path, "p")
    run = prog / "run"
    job = vlac.submit(prog, executor="local", folder=tmp_path / "s1")
    # kill rank 1 once step 7 is logged: checkpoint 5 is complete, 10 not yet written
    wait_for(lambda: any(r.get("step", -1) >= 6 for r in steps_logged(run) if r["event"] == "step"), 120, "step 7")
    pid = wait_for(lambda: task_pid(job, 1), 10, "rank 1's pid")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(Exception):
        job.results()  # rank 0 fails too: its collective lost a peer
    killed_at = max(r["step"] for r in steps_logged(run) if r["event"] == "step")
    assert killed_at < STEPS - 1

    resumed = vlac.submit(prog, executor="local", folder=tmp_path / "s2").results()[0]
    start = next(r for r in steps_logged(run) if r["event"] == "resumed")["step"]
    assert start % 5 == 0 and 5 <= start <= killed_at + 1
    assert resumed["steps"] == list(range(start, STEPS))
    assert resumed["losses"] == pytest.approx(reference["losses"][start:], rel=1e-6)
    assert resumed["param_sha256"] == reference["param_sha256"]


def test_a_preemption_signal_checkpoints_requeues_and_finishes(tmp_path, reference):
    prog = program(tmp_path, "p", checkpoint_every=10)
    run = prog / "run"
    job = vlac.submit(prog, executor="local", folder=tmp_path / "s")
    wait_for(lambda: any(r.get("step", -1) >= 2 for r in steps_logged(run) if r["event"] == "step"), 120, "step 3")
    # what Slurm does on preemption: the signal to every task of the job (submitit's
    # LocalJob._interrupt signals only the local controller, which has no handler for it)
    for rank in (0, 1):
        os.kill(wait_for(lambda: task_pid(job, rank), 10, f"rank {rank}'s pid"), signal.SIGUSR2)
    results = job.results()  # the local controller restarted the requeued tasks
    events = steps_logged(run)
    preempted = next(r for r in events if r["event"] == "preempted")["step"]
    resumed = next(r for r in events if r["event"] == "resumed")
    assert 3 <= preempted < 10  # stopped between regular checkpoints: its own checkpoint
    assert resumed["step"] == preempted and resumed["from"] == f"step_{preempted:08d}"
    assert results[0]["steps"] == list(range(preempted, STEPS)) and not results[0]["preempted"]
    assert results[0]["losses"] == pytest.approx(reference["losses"][preempted:], rel=1e-6)
    assert results[0]["param_sha256"] == reference["param_sha256"]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """The single-process program, and its uninterrupted losses."""
    tmp = tmp_path_factory.mktemp("single")
    os.environ["OMP_NUM_THREADS"] = "1"
    prog = program(tmp, "p", "single", checkpoint_every=10)
    return prog, vlac.submit(prog, executor="local", folder=tmp / "s", out_dir=tmp / "run").results()[0]["losses"]


@pytest.mark.parametrize("saved_with", ["dp2", "fsdp2", "pp2"])
def test_a_checkpoint_resumes_on_one_process(tmp_path, saved_with, single_process):
    """Save at step 10 under `saved_with` (replicated, sharded DTensors, pipeline stages), finish
    on one process: the same run, up to float reassociation, as one process from the start."""
    single, alone = single_process
    run = tmp_path / "run"
    first = vlac.submit(program(tmp_path, "a", saved_with, checkpoint_every=10), executor="local",
                        folder=tmp_path / "s1", out_dir=run, max_steps=10).results()[0]
    assert len(first["losses"]) == 10
    second = vlac.submit(single, executor="local", folder=tmp_path / "s2", out_dir=run).results()[0]
    assert second["steps"] == list(range(10, STEPS))
    assert first["losses"] + second["losses"] == pytest.approx(alone, rel=1e-4)
