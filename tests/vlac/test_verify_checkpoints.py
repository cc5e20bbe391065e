"""A run nobody resumes writes no checkpoint: `vlac.submit(..., checkpoints=False)` (the emitted
train.py's `main(checkpoints=False)`), which `vlac verify` asks for when it runs in a folder of
its own that it deletes afterwards; with a caller's folder the runs keep theirs."""

from pathlib import Path

import vlac
import vlac.verify
from vlac.spec.system import Cluster
from vlac.verify import SINGLE, Run, parse_layout

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"


def _one_process_program(tmp: Path) -> Path:
    exp = vlac.load(TINY, ["train.checkpoint_every=1"])
    cluster = Cluster.model_validate({"preset": exp.cluster.preset, "nodes": 1, "gpus_per_node": 1})
    return vlac.emit(exp, vlac.plan(exp, cluster=cluster, pin=SINGLE.pins(8)), tmp / "program")


def test_a_run_without_checkpoints_writes_none_and_trains_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    program = _one_process_program(tmp_path)
    kept = vlac.submit(program, executor="debug", max_steps=2, out_dir=tmp_path / "kept").results()[0]
    none = vlac.submit(program, executor="debug", max_steps=2, out_dir=tmp_path / "none",
                       checkpoints=False).results()[0]
    assert sorted(p.name for p in (tmp_path / "kept" / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]
    assert not (tmp_path / "none" / "checkpoints").exists() or not any((tmp_path / "none" / "checkpoints").iterdir())
    assert none["losses"] == kept["losses"] and none["grad_norms"] == kept["grad_norms"]


def test_verify_writes_checkpoints_only_into_a_callers_folder(tmp_path, monkeypatch):
    asked = []

    def run_layout(exp, layout, mb, steps, workdir, timeout_s=600.0, checkpoints=True):
        asked.append((layout.name, checkpoints))
        return Run(layout, layout.world, losses=[1.0] * steps, grad_norms=[1.0] * steps)

    monkeypatch.setattr(vlac.verify, "run_layout", run_layout)
    exp = vlac.load(TINY)
    assert vlac.verify.verify(exp, [parse_layout("dp2")], steps=2).ok
    assert vlac.verify.verify(exp, [parse_layout("dp2")], steps=2, workdir=tmp_path).ok
    assert asked == [("single", False), ("dp2", False), ("single", True), ("dp2", True)]
