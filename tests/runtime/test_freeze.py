"""`freeze: true` per component (runtime/freeze.py): a frozen component's parameters stay
bit-identical through optimiser steps and hold no optimiser state, on one process and under
data (ZeRO-3) and tensor parallelism, while the trainable components upstream of it still learn."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from process_cases import spawn_cases

import vlac
from vlac.spec.system import Cluster

ROOT = Path(__file__).resolve().parents[2]
LLAVA = ROOT / "examples" / "llava.yaml"
# weight decay on: a frozen matrix must not even decay
BASE = ["optimizer.weight_decay=0.1", "train.global_batch_tokens=128"]
CASES = {
    "lm": ["backbone.freeze=true"],  # LLaVA stage 1: the projector learns through the frozen LM
    "projector": ["modalities.image.freeze=true"],  # the projector kept, the LM fine-tuned
}


def _exp(case: str):
    return vlac.load(LLAVA, BASE + CASES[case], profile="tiny")


def _frozen(model, case: str) -> set[str]:
    prefix = "projectors." if case == "projector" else None
    return {n for n, _ in model.named_parameters() if (n.startswith(prefix) if prefix else not n.startswith("projectors."))}


def _steps(model, opt, exp, batches):
    from vlac.runtime.losses import Objective

    objective = Objective(model, exp)
    for b in batches:
        opt.zero_grad(set_to_none=True)
        objective(b)["loss"].backward()
        opt.step()


@pytest.mark.parametrize("case", list(CASES))
def test_frozen_component_is_untouched_and_has_no_optimiser_state(case):
    from vlac.runtime.data import SyntheticData
    from vlac.runtime.model import build_model
    from vlac.runtime.optim import build_optimizer

    exp = _exp(case)
    model = build_model(exp)
    frozen = _frozen(model, case)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    opt = build_optimizer(model, exp)
    data = SyntheticData(exp)
    _steps(model, opt, exp, [data.micro_batch(s, 0, 4, data.global_loss_tokens(s), torch.device("cpu")) for s in range(2)])
    state = {n for n, p in model.named_parameters() if p in opt.state}
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, before[name]) and p.grad is None, name
        else:
            assert not torch.equal(p, before[name]), name  # gradients reach it (through the frozen LM)
    assert state == set(before) - frozen


def test_freezing_everything_is_refused_by_name():
    from vlac.runtime.model import build_model
    from vlac.runtime.optim import build_optimizer

    exp = vlac.load(LLAVA, BASE + CASES["lm"] + CASES["projector"], profile="tiny")
    with pytest.raises(ValueError, match=r"nothing to train: backbone\.freeze, modalities\.image\.freeze"):
        build_optimizer(build_model(exp), exp)


def test_a_text_modality_has_no_freeze_field():
    with pytest.raises(ValueError, match=r"modalities\.question\.freeze.*unknown key"):
        vlac.load(LLAVA, ["modalities.question.freeze=true"], profile="tiny")


# ---- under parallel layouts (two gloo ranks) ------------------------------------------------------
LAYOUTS = {"fsdp2": {"dp": 2, "zero": 3}, "tp2": {"tp": 2, "sequence_parallel": True}}


def _plan(exp, pins: dict) -> dict:
    two = Cluster.model_validate({"preset": "h100-sxm", "nodes": 1, "gpus_per_node": 2})
    base = {"dp": 1, "tp": 1, "pp": 1, "ep": 1, "cp": 1, "zero": 0, "microbatch_size": 1}
    return vlac.plan(exp, cluster=two, pin={**base, **pins}).to_json()


def _rank(rank: int, case: str, plan: dict, work: str) -> None:
    """One layout on this rank of the process group (spawn_cases runs both layouts in one)."""
    from torch.distributed.tensor import DTensor

    from vlac.runtime.data import SyntheticData
    from vlac.runtime.distributed import DistEnv
    from vlac.runtime.model import build_model
    from vlac.runtime.optim import build_optimizer
    from vlac.runtime.parallel import parallelize
    from vlac.runtime.trainer import rank_micro_batches

    exp = _exp(case)
    layout = parallelize(build_model(exp), exp, plan, DistEnv(rank, 2, rank, torch.device("cpu")))
    opt = build_optimizer(layout.model, exp)
    data = SyntheticData(exp)
    for step in range(2):
        layout.forward_backward(rank_micro_batches(data, step, plan["plan"], layout.mesh, torch.device("cpu")))
        opt.step()
        opt.zero_grad(set_to_none=True)
    clean = lambda n: n.replace("_checkpoint_wrapped_module.", "").replace("module.", "")  # noqa: E731
    full = {clean(n): (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
            for n, p in layout.model.named_parameters()}
    state = sorted(clean(n) for n, p in layout.model.named_parameters() if p in opt.state)
    torch.save({"full": full, "state": state}, Path(work) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def layouts_run(tmp_path_factory) -> Path:
    """LAYOUT/rank{0,1}.pt of every layout, from one spawn of 2 ranks (starting them costs more
    than a layout)."""
    root = tmp_path_factory.mktemp("freeze-layouts")
    exp = _exp("lm")
    cases = {}
    for layout, pins in LAYOUTS.items():
        (root / layout).mkdir()
        cases[layout] = ("lm", _plan(exp, pins), str(root / layout))
    spawn_cases(_rank, cases, nprocs=2, out=root / "done.json")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_frozen_lm_is_untouched_under_layout(layout, layouts_run):
    from vlac.runtime.model import build_model

    case = "lm"
    initial = build_model(_exp(case))
    frozen = _frozen(initial, case)
    for rank in range(2):
        got = torch.load(layouts_run / layout / f"rank{rank}.pt")
        for name, p in initial.named_parameters():
            assert torch.equal(got["full"][name], p.detach()) == (name in frozen), (layout, rank, name)
        assert set(got["state"]) == {n for n, _ in initial.named_parameters()} - frozen, (layout, rank)
