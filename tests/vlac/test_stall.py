"""A rank that stops making progress in a real run (2 local processes, gloo) is named by the
watchdog the trainer starts, the job ends with exit status 3, and `vlac submit` says which rank
stalled instead of hanging."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import vlac
from vlac.cli import app
from vlac.runtime.watchdog import HEARTBEAT_DIR, STALL_EXIT_CODE, read_beats
from vlac.spec.system import Cluster
from vlac.verify import parse_layout

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"
STALL_AT = 2  # rank 1 stops before this step


@pytest.mark.slow
def test_a_stalled_rank_is_named_and_submit_ends_with_status_3(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    exp = vlac.load(TINY, ["train.stall_timeout_s=3", "train.steps=6", "train.checkpoint_every=100"])
    lay = parse_layout("dp2")
    cluster = Cluster.model_validate({"preset": "h100-sxm", "nodes": 1, "gpus_per_node": lay.world})
    program = vlac.emit(exp, vlac.plan(exp, cluster=cluster, pin=lay.pins(4)), tmp_path / "p")
    train = program / "train.py"
    loop_line = "            met = trainer.train_step()"
    assert loop_line in train.read_text()
    # the fault: rank 1 hangs before step 2 (as in a dead data loader or a lost GPU), rank 0 then
    # waits for it in the next collective
    train.write_text(train.read_text().replace(loop_line, (
        f"            if env.rank == 1 and trainer.step == {STALL_AT}:\n"
        f"                __import__('time').sleep(600)\n") + loop_line))

    result = CliRunner().invoke(app, ["submit", str(program), "--executor", "local"])
    assert result.exit_code == STALL_EXIT_CODE, result.output
    # whichever watchdog fires first writes the message: rank 1's names itself, rank 0's names rank 1
    assert (f"rank(s) 1 stopped at step {STALL_AT}" in result.output
            or f"waits for rank(s) 1, which stopped at step {STALL_AT}" in result.output), result.output
    assert "stalled" in result.output and "Traceback" not in result.output
    beats = read_beats(program / "run" / HEARTBEAT_DIR)
    assert (beats[1]["step"], beats[1]["busy"]) == (STALL_AT, False) and beats[0]["busy"]
