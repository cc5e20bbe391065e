"""The emitted program trains a model with multi-token prediction (runtime/mtp.py) on one process:
the MTP loss of each depth is logged beside the AR loss, the modules' weights are checkpointed,
and a run resumed from a checkpoint continues as if it had never stopped."""

import json
import runpy
from pathlib import Path

import pytest

import vlac

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
ONE_PROCESS_MTP = ["cluster.gpus_per_node=1", "parallelism.dp=1", "losses.mtp.depth=2", "losses.mtp.weight=0.3",
                   "train.checkpoint_every=1"]


def _steps(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["event"] == "step"]


def test_program_trains_logs_and_resumes_mtp(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    exp = vlac.load(TINY, ONE_PROCESS_MTP)
    program = vlac.emit(exp, vlac.plan(exp), tmp_path / "p")
    main = runpy.run_path(str(program / "train.py"))["main"]
    whole = main(max_steps=2, out_dir=tmp_path / "whole")
    steps = _steps(tmp_path / "whole")
    assert [sorted(s["mtp_loss"]) for s in steps] == [["1", "2"]] * 2
    first = steps[0]
    # the loss is AR + (lambda / D) * sum_k CE_k + MoE terms; at initialisation every CE is near ln V
    assert first["loss"] > first["ar_loss"] + first["aux_loss"]
    assert all(4.0 < v < 7.0 for v in first["mtp_loss"].values())
    evals = [r for r in map(json.loads, (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines())
             if r["event"] == "eval"]
    assert evals and evals[-1]["mtp_loss"] > 0 and evals[-1]["loss"] > evals[-1]["ar_loss"] + evals[-1]["mtp_loss"]
    main(max_steps=1, out_dir=tmp_path / "resumed")
    resumed = main(max_steps=1, out_dir=tmp_path / "resumed")  # from step 1's checkpoint (MTP weights in it), one more
    assert resumed["losses"][-1] == pytest.approx(whole["losses"][-1], rel=1e-6)
    assert _steps(tmp_path / "resumed")[-1]["mtp_loss"] == pytest.approx(steps[-1]["mtp_loss"], rel=1e-6)
