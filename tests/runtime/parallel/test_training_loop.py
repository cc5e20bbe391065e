"""The training loop on one process: per-modality clipping, skip-and-report on a non-finite
loss, metrics lines, and atomic checkpoints that keep the last K."""

import json
import runpy
from pathlib import Path

import torch

import vlac
from vlac.runtime.checkpoint import Checkpointer
from vlac.runtime.model import build_model
from vlac.runtime.optim import build_optimizer
from vlac.spec.system import Cluster

TINY = Path(__file__).resolve().parents[3] / "examples" / "tiny_vla.yaml"
ONE = ["parallelism.dp=1", "parallelism.microbatch_size=8", "cluster.gpus_per_node=1", "launcher.tasks=1"]


def run(tmp_path: Path, sets: list[str]) -> tuple[dict, list[dict]]:
    exp = vlac.load(TINY, ONE + sets)
    cluster = Cluster.model_validate({"preset": "h100-sxm", "nodes": 1, "gpus_per_node": 1})
    program = vlac.emit(exp, vlac.plan(exp, cluster=cluster), tmp_path / "p")
    result = runpy.run_path(str(program / "train.py"))["main"](out_dir=tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return result, [x for x in lines if x["event"] == "step"]


def test_per_modality_clipping_reports_each_terms_norm_and_trains(tmp_path):
    result, steps = run(tmp_path, ["train.steps=4", "optimizer.per_modality_clip=true", "optimizer.grad_clip=0.5"])
    norms = steps[0]["modality_grad_norm"]
    assert {"ar.text", "ar.image", "ar.action", "moe"} <= set(norms)
    assert all(v > 0 for v in norms.values())
    assert steps[0]["grad_norm"] <= 0.5 * len(norms) + 1e-6  # a sum of clipped terms
    assert result["losses"][-1] < result["losses"][0]
    assert steps[0]["router_entropy"] and steps[0]["load_imbalance"]  # the library's MoE diagnostics


def test_a_non_finite_step_is_skipped_and_reported(tmp_path, monkeypatch):
    # an update that turns the weights to inf (the spec bounds the learning rate, so the fault is
    # injected): every later loss is non-finite and must be skipped, not crash the run
    step = torch.optim.AdamW.step

    def poisoned_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned_step)
    result, steps = run(tmp_path, ["train.steps=3", "optimizer.grad_clip=null"])
    assert [s["skipped"] for s in steps] == [False, True, True]
    assert len(result["losses"]) == 3  # the run goes on and reports, it does not crash


def test_checkpoints_are_atomic_and_only_the_last_k_are_kept(tmp_path):
    exp = vlac.load(TINY, ONE)
    model = build_model(exp)
    opt = build_optimizer(model, exp)
    ck = Checkpointer(tmp_path, keep_last=2, is_main=True)
    for step in (1, 2, 3):
        ck.save(step, model, opt, {"experiment": exp.name})
    assert [p.name for p in ck.complete()] == ["step_00000002", "step_00000003"]
    (tmp_path / "step_00000009.partial").mkdir()  # a save that crashed
    (tmp_path / "step_00000008").mkdir()  # renamed by hand, no extra.json
    assert ck.latest().name == "step_00000003"
    with torch.no_grad():
        before = model.head.weight.clone()
        model.head.weight.add_(1.0)
    assert ck.load(ck.latest(), model, opt)["step"] == 3
    torch.testing.assert_close(model.head.weight, before)
