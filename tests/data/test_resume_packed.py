"""Kill and resume under dp2 (2 spawned gloo processes) trains on the same
packed samples with the same losses as an uninterrupted run: the loader's state is in the
checkpoint and sequence i of the packing plan is a pure function of (seed, i)."""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import socket
from pathlib import Path

import pytest
import torch.multiprocessing as mp

import vlac

STEPS, KILL_AT = 4, 3  # checkpoints every 2 steps: the kill loses step 3's work, the resume redoes it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, program: str, out: str, kill: bool) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    from vlac.runtime.trainer import Trainer

    micro_batches, train_step = Trainer.micro_batches, Trainer.train_step

    def recorded(self, step):  # what this rank trains on at each step
        batches = micro_batches(self, step)
        digest = hashlib.sha256(b"".join(b["tokens"].numpy().tobytes() + b["sample"].numpy().tobytes()
                                         for b in batches)).hexdigest()
        with open(Path(out) / f"samples-{rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "sha": digest}) + "\n")
        return batches

    def killed(self):
        if kill and self.step == KILL_AT - 1:
            os._exit(9)  # no clean-up, no checkpoint: as a SIGKILL would leave it
        return train_step(self)

    Trainer.micro_batches, Trainer.train_step = recorded, killed
    result = runpy.run_path(str(Path(program) / "train.py"))["main"](out_dir=Path(out) / "run")
    Path(out, f"result-{rank}.json").write_text(json.dumps(result["losses"]))


def _losses(out: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["event"] == "step"}


def _samples(out: Path, rank: int) -> dict[int, str]:
    return {r["step"]: r["sha"] for r in map(json.loads, (out / f"samples-{rank}.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_kill_and_resume_under_dp2_repeats_nothing_and_skips_nothing(prepared, tmp_path):
    exp, _ = prepared
    exp = vlac.load(exp, [f"train.steps={STEPS}", "train.checkpoint_every=2", "train.log_every=1"])
    program = vlac.emit(exp, vlac.plan(exp, pin={"dp": 2, "tp": 1, "pp": 1, "cp": 1, "ep": 1}), tmp_path / "program")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir(), broken.mkdir()
    mp.start_processes(_rank, args=(_free_port(), str(program), str(whole), False), nprocs=2)
    with pytest.raises(mp.ProcessExitedException):
        mp.start_processes(_rank, args=(_free_port(), str(program), str(broken), True), nprocs=2)
    assert not (broken / "result-0.json").exists()
    mp.start_processes(_rank, args=(_free_port(), str(program), str(broken), False), nprocs=2)  # resumes at step 2
    for rank in (0, 1):
        assert _samples(broken, rank) == _samples(whole, rank)  # the same rows, step by step, on each rank
    assert _samples(whole, 0)[0] != _samples(whole, 1)[0]  # the ranks train on different halves
    resumed = json.loads((broken / "result-0.json").read_text())
    assert len(resumed) == STEPS - 2
    assert _losses(broken) == pytest.approx(_losses(whole), rel=1e-6)
    assert len(_losses(whole)) == STEPS
