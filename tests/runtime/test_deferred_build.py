"""Deferred construction in the order the emitted train.py runs it (build_model(deferred=True) ->
parallelize -> trainer.resume), on one process: FP8 GEMMs converted while the weights are still on
the meta device, frozen components, and a resumed checkpoint all end with the parameters, the
loss and the gradients of the eagerly built model (a Hugging Face checkpoint:
tests/runtime/hf/test_hf_deferred.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vlac
from vlac.runtime.data import SyntheticData
from vlac.runtime.distributed import DistEnv
from vlac.runtime.model import build_model
from vlac.runtime.optim import build_optimizer, build_scheduler
from vlac.runtime.parallel import parallelize
from vlac.runtime.trainer import Trainer
from vlac.spec.system import Cluster

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
ONE_GPU = Cluster.model_validate({"preset": "h100-sxm", "nodes": 1, "gpus_per_node": 1})
ONE = DistEnv(0, 1, 0, torch.device("cpu"))
FP8 = ["precision.fp8.enabled=true", "precision.fp8.keep_first_last_bf16=false"]


def _plan(exp) -> dict:
    return vlac.plan(exp, cluster=ONE_GPU, pin={"dp": 1}).to_json()


def _laid_out(exp, plan: dict, deferred: bool):
    return parallelize(build_model(exp, "cpu", deferred=deferred), exp, plan, ONE)


def _step(layout, exp, plan) -> tuple[float, dict[str, torch.Tensor]]:
    """One micro-batch forward and backward: the loss and every parameter's gradient."""
    batch = SyntheticData(exp).micro_batch(0, 0, plan["plan"]["microbatch_size"], 1.0, torch.device("cpu"))
    stats = layout.forward_backward([batch])
    return float(stats.ar), {n: p.grad for n, p in layout.model.named_parameters() if p.grad is not None}


def _same_parameters(a, b) -> list[str]:
    """Names whose parameter differs between two laid-out models (values or requires_grad)."""
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    assert pa.keys() == pb.keys()
    return [n for n in pa if pa[n].requires_grad != pb[n].requires_grad or not torch.equal(pa[n], pb[n])]


def test_fp8_converts_the_meta_model_and_materialises_the_eager_values():
    """parallelize converts the planned GEMMs to torchao Float8Linear before it materialises: the
    converted modules take the meta weights over, and are filled with the eager model's values."""
    from torchao.float8.float8_linear import Float8Linear

    exp = vlac.load(TINY, FP8)
    plan = _plan(exp)
    eager, deferred = _laid_out(exp, plan, False), _laid_out(exp, plan, True)
    float8 = [n for n, m in deferred.model.named_modules() if isinstance(m, Float8Linear)]
    assert float8 and float8 == [n for n, m in eager.model.named_modules() if isinstance(m, Float8Linear)]
    assert deferred.materialized_bytes > 0 and eager.materialized_bytes == 0
    assert not _same_parameters(eager, deferred)
    (loss_e, grads_e), (loss_d, grads_d) = _step(eager, exp, plan), _step(deferred, exp, plan)
    assert loss_d == loss_e
    assert grads_d.keys() == grads_e.keys() and all(torch.equal(grads_d[n], grads_e[n]) for n in grads_e)


@pytest.mark.parametrize("sets", [["backbone.freeze=true"], ["modalities.image.freeze=true"]],
                         ids=["language-model", "projector"])
def test_frozen_components_stay_frozen_through_materialisation(sets):
    exp = vlac.load(ROOT / "examples" / "llava.yaml", sets, profile="tiny")
    plan = _plan(exp)
    eager, deferred = _laid_out(exp, plan, False), _laid_out(exp, plan, True)
    frozen = [n for n, p in deferred.model.named_parameters() if not p.requires_grad]
    assert frozen and len(frozen) < len(list(deferred.model.parameters()))
    assert not _same_parameters(eager, deferred)
    optimizer = build_optimizer(deferred.model, exp)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(deferred.parameters())


def test_a_checkpoint_resumes_into_a_deferred_model(tmp_path):
    """A run saves after one step; a new process builds deferred (drawing the initial values) and
    resumes: the checkpoint's values replace the drawn ones."""
    exp = vlac.load(TINY)
    plan = _plan(exp)

    def trainer():
        layout = _laid_out(exp, plan, True)
        optimizer = build_optimizer(layout.model, exp)
        return Trainer(exp, plan, layout, optimizer, build_scheduler(optimizer, exp), ONE, tmp_path)

    first = trainer()
    first.train_step()
    first.save()
    second = trainer()
    assert _same_parameters(first.model, second.model)  # a fresh build starts from the initial values
    assert second.resume() == 1
    assert not _same_parameters(first.model, second.model)


def test_gradient_hooks_registered_before_materialising_still_run():
    """Tensor parallelism registers a hook on each late-fusion gate (summing its gradient over tp
    under sequence parallelism) before the weights are materialised; materialising swaps every
    parameter's tensor, and the hooks must still run (they did not: flamingo tp2 drifted 0.8 %)."""
    from vlac.runtime import materialize as mz

    with mz.weights_on_meta():
        linear = torch.nn.Linear(4, 3, bias=False)
    linear.gate = torch.nn.Parameter(torch.tensor(0.5))  # a scalar: never deferred
    seen = []
    linear.gate.register_hook(lambda g: seen.append("hook") or 2 * g)
    linear.gate.register_post_accumulate_grad_hook(lambda p: seen.append("accumulated"))
    mz.materialize([linear], linear, mz.DeferredInit(seed=0, layers=1), torch.device("cpu"))
    assert not linear.weight.is_meta
    (linear.gate * linear(torch.ones(4)).sum()).backward()
    assert seen == ["hook", "accumulated"]
    torch.testing.assert_close(linear.gate.grad, 2 * linear.weight.detach().sum())  # the hook doubled it
