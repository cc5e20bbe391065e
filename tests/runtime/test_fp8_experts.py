"""FP8 expert GEMMs: scaled GEMMs equal their dequantised reference, delayed scaling follows the
amax history, gradients track fp32, a tiny MoE trains in FP8 like fp32, and the plan's decisions
pick the modules."""

from pathlib import Path

import pytest
import torch

import vlac
from vlac.runtime.fp8_experts import (E4M3, E5M2, AmaxHistory, Fp8GroupedGemm, convert_grouped_experts,
                                      fp8_expert_names, scaled_mm)
from vlac.runtime.losses import Objective
from vlac.runtime.data import SyntheticData
from vlac.runtime.model import build_model
from vlac.spec.system import Cluster

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"
FP8 = ["precision.fp8.enabled=true", "precision.fp8.keep_first_last_bf16=false"]
ONE_GPU = Cluster.model_validate({"preset": "h100-sxm", "nodes": 1, "gpus_per_node": 1})
DELAYED = {"name": "DelayedScaling", "format": "HYBRID", "amax_history_len": 4, "margin": 0,
           "amax_compute_algo": "max"}


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("shape", [(16, 32, 48), (5, 24, 7), (1, 1, 1), (0, 16, 16), (16, 0, 8)])
def test_scaled_mm_equals_the_dequantised_product(shape):
    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    a8 = (torch.randn(m, k, generator=g) * 3).to(E4M3)
    b8 = (torch.randn(k, n, generator=g) * 3).to(E5M2)
    sa, sb = torch.tensor([2.0]), torch.tensor([0.5])
    got = scaled_mm(a8, sa, b8, sb, torch.float32)
    want = (a8.float() / 2.0) @ (b8.float() / 0.5)
    assert got.shape == (m, n)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_ragged_groups_equal_batched_groups_and_empty_groups_get_zero_gradient():
    """The dropless path's groups (rows ends[e-1]:ends[e]; an expert may get none) against the
    capacity path's equal groups, forward and backward."""
    torch.manual_seed(0)
    w = torch.randn(3, 32, 16, requires_grad=True)
    x = torch.randn(3, 16, 32, requires_grad=True)
    batched = Fp8GroupedGemm(DELAYED)(x, w)
    x2 = x.detach().reshape(48, 32).clone().requires_grad_()
    w2 = w.detach().clone().requires_grad_()
    ragged = Fp8GroupedGemm(DELAYED)(x2, w2, torch.tensor([16, 32, 48]))
    assert torch.equal(batched.reshape(48, 16), ragged)
    batched.sum().backward()
    ragged.sum().backward()
    assert torch.equal(x.grad.reshape(48, 32), x2.grad) and torch.equal(w.grad, w2.grad)
    w3 = w.detach().clone().requires_grad_()
    y = Fp8GroupedGemm(DELAYED)(x2.detach(), w3, torch.tensor([16, 16, 48]))  # expert 1 gets no rows
    y.sum().backward()
    assert torch.count_nonzero(w3.grad[1]) == 0 and torch.count_nonzero(w3.grad[2]) > 0


def test_fp8_gemm_tracks_fp32_forward_and_backward():
    torch.manual_seed(0)
    x = torch.randn(4, 32, 64, requires_grad=True)
    w = (torch.randn(4, 64, 48) / 8).requires_grad_()
    gemm = Fp8GroupedGemm({"name": "Float8CurrentScaling", "format": "HYBRID"})
    y = gemm(x, w)
    gy = torch.randn_like(y)
    y.backward(gy)
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y_ref = torch.bmm(x_ref, w_ref)
    y_ref.backward(gy)
    # E4M3 keeps 3 mantissa bits (relative spacing 1/8): a GEMM over 64 terms lands within a few %
    assert _rel(y.detach(), y_ref.detach()) < 0.05
    assert _rel(x.grad, x_ref.grad) < 0.1  # E5M2 gradients: 2 mantissa bits
    assert _rel(w.grad, w_ref.grad) < 0.1
    assert y.dtype == x.dtype and x.grad.dtype == x.dtype and w.grad.dtype == w.dtype


def test_delayed_scaling_uses_the_history_and_saturates_outliers():
    h = AmaxHistory(length=3, margin=0, algo="max", delayed=True)
    x = torch.full((4,), 2.0)
    # empty history: the current amax
    assert float(h.scale(x, E4M3)) == pytest.approx(448.0 / 2.0)
    h.record(torch.tensor(4.0))
    h.record(torch.tensor(1.0))
    big = torch.full((4,), 100.0)
    # the history's max (4), not the current amax (100): an outlier saturates in the cast
    assert float(h.scale(big, E4M3)) == pytest.approx(448.0 / 4.0)
    h.record(torch.tensor(0.5))
    h.record(torch.tensor(0.5))  # 4.0 rolled out of a history of 3
    assert float(h.scale(big, E4M3)) == pytest.approx(448.0 / 1.0)
    recent = AmaxHistory(length=3, margin=1, algo="most_recent", delayed=True)
    recent.record(torch.tensor(8.0))
    recent.record(torch.tensor(2.0))
    assert float(recent.scale(x, E5M2)) == pytest.approx(57344.0 / 2.0 / 2.0)
    with pytest.raises(ValueError, match="max, most_recent"):
        AmaxHistory(3, 0, "mean", True)


def test_a_forward_records_amaxes_and_an_outlier_does_not_give_inf():
    gemm = Fp8GroupedGemm(DELAYED)
    x = torch.randn(2, 16, 16)
    w = torch.randn(2, 16, 16, requires_grad=True)
    gemm(x, w).sum().backward()
    assert float(gemm.x.history[0]) == pytest.approx(float(x.abs().max()))
    assert float(gemm.w.history[0]) == pytest.approx(float(w.detach().abs().max()))
    assert float(gemm.grad.history[0]) == 1.0  # d(sum)/dy = 1
    y = gemm(x * 1000, w)  # scaled for amax ~ |x|: the outlier saturates at 448/scale
    assert torch.isfinite(y).all()


def _tiny(overrides=()):
    return vlac.load(TINY, overrides=[*FP8, *overrides])


def test_the_plans_decisions_name_the_expert_modules():
    exp = _tiny()
    plan = vlac.plan(exp, cluster=ONE_GPU, pin={"dp": 1}).to_json()
    model = build_model(exp)
    names = fp8_expert_names(model, plan)
    assert names == ["layers.0.mlp.experts", "layers.1.mlp.experts"]
    for g in plan["fp8"]["gemms"]:  # a layer kept in BF16 is left alone
        if g.get("module") == "model.layers.0.mlp.experts":
            g["fp8"] = False
    assert fp8_expert_names(model, plan) == ["layers.1.mlp.experts"]
    dropless = _tiny(["moe.capacity_factor=null"])
    plan = vlac.plan(dropless, cluster=ONE_GPU, pin={"dp": 1}).to_json()
    assert fp8_expert_names(build_model(dropless), plan) == ["layers.0.mlp.experts", "layers.1.mlp.experts"]


@pytest.mark.parametrize("dispatch", [[], ["moe.capacity_factor=null"]], ids=["capacity", "dropless"])
def test_converted_experts_train_like_fp32(dispatch):
    exp = _tiny(dispatch)
    data = SyntheticData(exp)
    losses = {}
    for fp8 in (False, True):
        model = build_model(exp)
        if fp8:
            convert_grouped_experts(model, ["layers.0.mlp.experts", "layers.1.mlp.experts"], DELAYED)
        objective = Objective(model, exp)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        run = []
        for step in range(5):
            batch = data.micro_batch(step, 0, 4, float(4 * exp.train.seq_len), torch.device("cpu"))
            out = objective(batch)
            (out["ar_loss"] + out["aux_loss"]).backward()
            opt.step()
            opt.zero_grad()
            run.append(float(out["ar_loss"].detach()))
        losses[fp8] = run
        if fp8:
            hist = model.layers[1].mlp.experts.fp8["w2"].grad.history
            assert (hist[:4] > 0).all()  # four backward passes recorded gradient amaxes
    assert losses[True][-1] < losses[True][0]
    for a, b in zip(losses[True], losses[False]):
        assert a == pytest.approx(b, rel=0.03)
    assert losses[True] != losses[False]  # the FP8 path really ran


def test_converting_something_else_says_what_it_expected():
    model = build_model(_tiny())
    with pytest.raises(TypeError, match="not the GroupedExperts"):
        convert_grouped_experts(model, ["layers.0.attn"], DELAYED)


@pytest.mark.triton
def test_the_triton_casts_give_the_same_gemm():
    torch.manual_seed(1)
    x = torch.randn(2, 16, 32)
    w = torch.randn(2, 32, 16)
    ref = Fp8GroupedGemm(DELAYED, backend="torch")(x, w)
    tri = Fp8GroupedGemm(DELAYED, backend="triton")(x, w)
    assert torch.equal(ref, tri)
