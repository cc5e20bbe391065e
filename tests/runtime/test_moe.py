import math

import pytest
import torch
import torch.fx as fx

import vlac
from vlac.runtime.moe import MoELayer, dropless_experts, router_entropy, update_balancing_bias

from runtime_helpers import TINY


def _moe(experts=4, top_k=2, cf=1.0, balancing="aux_loss", **extra):
    over = [f"moe.experts={experts}", f"moe.top_k={top_k}", f"moe.capacity_factor={cf}",
            f"moe.balancing={balancing}", "moe.shared_experts=0"] + [f"moe.{k}={v}" for k, v in extra.items()]
    exp = vlac.load(TINY, over)
    torch.manual_seed(0)
    return MoELayer(exp.backbone, exp.moe)


def test_capacity_dispatch_drops_exactly_the_overflow():
    layer = _moe(experts=4, top_k=1, cf=1.0)
    # every token to expert 0: capacity is ceil(8*1/4*1.0) = 2, so 6 of 8 are dropped
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0].fill_(1.0)
    x = torch.ones(1, 8, 64)
    y, aux, load, dropped = layer(x)
    assert load.tolist() == [8.0, 0.0, 0.0, 0.0]
    assert dropped.item() == pytest.approx(6 / 8)
    assert torch.count_nonzero(y.abs().sum(-1)).item() == 2  # the first two tokens got an expert
    assert y[0, 2:].abs().sum() == 0


def _reference(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """Every token through each of its experts, one at a time."""
    h = x.reshape(-1, x.size(-1))
    _, _, idx, weights = layer.router(h)
    ex = layer.experts
    out = torch.zeros_like(h)
    for t in range(h.size(0)):
        for j in range(idx.size(1)):
            e = idx[t, j]
            a = torch.nn.functional.silu(h[t] @ ex.w1[e]) * (h[t] @ ex.w3[e])
            out[t] += weights[t, j] * (a @ ex.w2[e])
    return out.view_as(x)


def test_dropless_matches_the_per_token_reference_and_drops_nothing():
    layer = _moe(cf="null")
    with torch.no_grad():
        layer.router.weight[0].add_(3.0)  # a skewed load: capacity dispatch would drop here
    x = torch.randn(2, 16, 64, requires_grad=True)
    y, _, load, dropped = layer(x)
    assert dropped.item() == 0 and load.max() > load.min()
    torch.testing.assert_close(y, _reference(layer, x), atol=1e-5, rtol=1e-4)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and layer.experts.w1.grad.abs().sum() > 0


def test_capacity_dispatch_with_room_for_all_equals_dropless():
    layer = _moe(cf=4.0)
    x = torch.randn(1, 12, 64)
    y_cap, *_ = layer(x)
    layer.dropless = True
    y_free, *_ = layer(x)
    torch.testing.assert_close(y_cap, y_free, atol=1e-5, rtol=1e-4)


def test_dropless_is_one_fx_leaf_with_known_shape_on_meta():
    layer = _moe(cf="null")
    gm = fx.symbolic_trace(layer)
    leaves = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is dropless_experts]
    assert len(leaves) == 1
    meta = _moe(cf="null").to("meta")
    y, aux, load, dropped = meta(torch.empty(2, 8, 64, device="meta"))
    assert y.shape == (2, 8, 64) and y.device.type == "meta"


def test_load_balancing_loss_is_minimal_at_uniform_load():
    layer = _moe(experts=4, top_k=1, cf=4.0, z_loss_coef=0.0)
    logits = torch.zeros(8, 4)
    uniform = layer._aux_loss(logits, logits.softmax(-1), torch.tensor([2.0, 2, 2, 2]))
    skewed_probs = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(8, 1)
    skewed = layer._aux_loss(logits, skewed_probs, torch.tensor([8.0, 0, 0, 0]))
    assert uniform.item() == pytest.approx(layer.cfg.aux_loss_coef * 1.0)
    assert skewed.item() > uniform.item()
    half = layer._aux_loss(logits, torch.tensor([[0.4, 0.4, 0.1, 0.1]]).repeat(8, 1), torch.tensor([4.0, 4, 0, 0]))
    assert uniform.item() < half.item() < skewed.item()


def test_z_loss_penalises_large_router_logits():
    layer = _moe(balancing="none", z_loss_coef=0.01)
    small, big = torch.zeros(4, 4), torch.full((4, 4), 5.0)
    load = torch.ones(4)
    z_small = layer._aux_loss(small, small.softmax(-1), load)
    z_big = layer._aux_loss(big, big.softmax(-1), load)
    assert z_small.item() == pytest.approx(0.01 * math.log(4) ** 2)
    assert z_big.item() > z_small.item()


def test_aux_free_bias_moves_toward_balance_and_shifts_selection_only():
    layer = _moe(balancing="aux_free", top_k=1, bias_update_rate=0.5)
    update_balancing_bias(layer, torch.tensor([10.0, 0.0, 0.0, 2.0]))
    bias = layer.router.expert_bias
    assert bias[0] < 0 and bias[1] > 0 and bias[2] > 0 and bias[3] > 0
    h = torch.randn(5, 64)
    _, probs, idx, weights = layer.router(h)
    torch.testing.assert_close(weights, probs.gather(-1, idx))  # mixing weights are the unbiased scores
    with torch.no_grad():
        layer.router.expert_bias.copy_(torch.tensor([0.0, 0.0, 10.0, 0.0]))
    assert (layer.router(h)[2] == 2).all()  # but selection follows it


def test_router_entropy_is_log_e_for_a_uniform_router():
    layer = _moe(experts=8)
    with torch.no_grad():
        layer.router.weight.zero_()
    layer(torch.randn(1, 4, 64))
    assert layer.router_entropy.item() == pytest.approx(math.log(8), rel=1e-5)
    assert router_entropy(torch.eye(4), "softmax").item() == pytest.approx(0.0, abs=1e-6)


def test_expert_dropout_is_active_in_training_only():
    layer = _moe(cf=4.0, expert_dropout=0.5)
    x = torch.randn(1, 8, 64)
    layer.eval()
    torch.testing.assert_close(layer(x)[0], layer(x)[0])
    layer.train()
    assert not torch.allclose(layer(x)[0], layer(x)[0])
