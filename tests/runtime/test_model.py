import time
from pathlib import Path

import pytest
import torch
import torch.fx as fx

import vlac
from vlac.runtime.masks import attention_mask
from vlac.runtime.model import build_model
from vlac.runtime.moe import MoELayer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
TINY = ROOT / "examples" / "tiny_vla.yaml"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_full_size_model_traces_on_meta_quickly(path):
    exp = vlac.load(path)
    model = build_model(exp, "meta")
    t = time.perf_counter()
    gm = fx.symbolic_trace(model)
    assert time.perf_counter() - t < 5.0
    assert any(n.op == "call_function" and n.target is torch.nn.functional.scaled_dot_product_attention
               for n in gm.graph.nodes)


def test_traced_model_equals_eager():
    exp = vlac.load(TINY)
    model = build_model(exp).eval()
    batch = {"tokens": torch.randint(0, exp.vocab_layout().size, (2, 48))}
    gm = fx.symbolic_trace(model)
    torch.testing.assert_close(gm(batch)["logits"], model(batch)["logits"])


def _moe(experts=4, top_k=2, cf=1.0, balancing="aux_loss"):
    exp = vlac.load(TINY, [f"moe.experts={experts}", f"moe.top_k={top_k}", f"moe.capacity_factor={cf}",
                           f"moe.balancing={balancing}", "moe.shared_experts=0"])
    torch.manual_seed(0)
    return MoELayer(exp.backbone, exp.moe)


def test_capacity_dispatch_drops_exactly_the_overflow():
    layer = _moe(experts=4, top_k=1, cf=1.0)
    # route every token to expert 0: capacity is ceil(8*1/4*1.0)=2, so 6 of 8 are dropped
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0].fill_(1.0)
    x = torch.ones(1, 8, 64)
    y, aux, load, dropped = layer(x)
    assert load.tolist() == [8.0, 0.0, 0.0, 0.0]
    assert dropped.item() == pytest.approx(6 / 8)
    assert torch.count_nonzero(y.abs().sum(-1)).item() == 2  # the first two tokens got an expert
    assert y[0, 2:].abs().sum() == 0


def test_dropless_keeps_every_token():
    exp = vlac.load(TINY, ["moe.capacity_factor=null", "moe.shared_experts=0"])
    layer = MoELayer(exp.backbone, exp.moe)
    _, _, _, dropped = layer(torch.randn(2, 16, 64))
    assert dropped.item() == 0


def test_load_balancing_loss_is_minimal_at_uniform_load():
    layer = _moe(experts=4, top_k=1, cf=4.0)
    layer.cfg = layer.cfg.model_copy(update={"z_loss_coef": 0.0})
    logits = torch.zeros(8, 4)
    uniform = layer._aux_loss(logits, logits.softmax(-1), torch.tensor([2.0, 2, 2, 2]))
    skewed_probs = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(8, 1)
    skewed = layer._aux_loss(logits, skewed_probs, torch.tensor([8.0, 0, 0, 0]))
    assert uniform.item() == pytest.approx(layer.cfg.aux_loss_coef * 1.0)
    assert skewed.item() > uniform.item()


def test_bidirectional_image_mask():
    span = torch.tensor([[0, 1, 1, 0, 2, 2]])
    m = attention_mask("bidirectional_image", span, None)[0, 0]
    assert m[1, 2] and m[2, 1]  # inside one image: both ways
    assert not m[0, 1] and m[4, 1]  # causal elsewhere
    assert m[5, 4] and m[4, 5] and not m[3, 4]
    with pytest.raises(ValueError, match="choose from"):
        attention_mask("sliding", span, None)


def test_gradients_reach_every_parameter():
    exp = vlac.load(ROOT / "examples" / "vla_10b_moe_h100.yaml", profile="tiny")
    from vlac.runtime.data import SyntheticData
    from vlac.runtime.losses import Objective
    model = build_model(exp)
    obj = Objective(model, exp)
    data = SyntheticData(exp)
    batch = data.micro_batch(0, 0, 4, data.global_loss_tokens(0), torch.device("cpu"))
    obj(batch)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
