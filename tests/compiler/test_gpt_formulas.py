"""The plain-GPT-layer formulas of ../shared/DESIGN.md reproduced from the lowered graph of a
GPT-3-style spec (learned positions, 4h GELU MLP, LayerNorm, MHA, biases, tied embeddings)."""

import pytest

import vlac
from vlac.compiler import formulas as F

SHAPES = [dict(layers=2, hidden=128, heads=4, seq_len=64, vocab=512),
          dict(layers=3, hidden=256, heads=8, seq_len=256, vocab=1024)]


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"h{s['hidden']}s{s['seq_len']}")
def gpt(request):
    exp = F.gpt_experiment(**request.param)
    bb = exp.backbone
    return exp, bb.layers, bb.hidden, bb.heads, exp.train.seq_len, exp.vocab_layout().padded


def test_parameters(gpt):
    exp, l, h, a, s, V = gpt
    g = vlac.lower(exp)
    # the formula leaves out the final LayerNorm (weight and bias)
    assert g.params_total == F.parameters(l, h, V, s) + 2 * h


@pytest.mark.parametrize("b", [1, 3])
def test_gemm_flops_with_full_recompute(gpt, b):
    exp, l, h, a, s, V = gpt
    g = vlac.lower(exp, micro_batch=b)
    assert F.graph_gemm_flops_full_recompute(g) == pytest.approx(F.gemm_flops_full_recompute(b, s, l, h, V), rel=1e-12)
    # as it runs: causal attention at half, a 2.5x flash backward, checkpoint's early stop
    attention = sum(2 * n.flops_fwd for n in g.nodes if n.kind == "attention")  # dense forward
    last_gemm = sum(n.flops_fwd for n in g.nodes if n.in_block and n.kind == "gemm" and not n.recomputed)
    assert last_gemm == l * 2 * b * s * 4 * h * h  # the MLP's second GEMM, not rerun
    assert g.flops_executed("full") == pytest.approx(F.gemm_flops_full_recompute(b, s, l, h, V)
                                                    - 4 * attention + 0.5 * attention * 4.5 - last_gemm, rel=1e-12)


@pytest.mark.parametrize("t,sp", [(1, False), (2, False), (4, False), (2, True), (8, True)])
@pytest.mark.parametrize("b", [1, 2])
def test_activation_bytes_per_layer(gpt, t, sp, b):
    exp, l, h, a, s, V = gpt
    g = vlac.lower(exp, micro_batch=b, dtype="bf16")
    graph = F.layer_bytes(g, 1, "none", t, sp)
    assert graph == F.flash_layer_bytes(s, b, h, a, t, sp)
    # the formula's 34sbh + 5as²b, less what flash attention never stores (5as²b) and the two
    # dropout masks of dropout 0 (2sbh), plus the fp32 log-sum-exp and LayerNorm statistics
    split = t if sp or t == 1 else 1
    masks = 2 * s * b * h / split
    core = 5 * a * s * s * b / t
    extras = (4 * a * s * b) / t + 16 * s * b / split
    assert graph == pytest.approx(F.activation_bytes(s, b, h, a, t, sp) - core - masks + extras, rel=1e-12)
    assert F.layer_bytes(g, 1, "full", t, sp) == F.activation_bytes(s, b, h, a, t, sp, "full")


def test_flash_attention_is_megatron_selective_recompute(gpt):
    exp, l, h, a, s, V = gpt
    g = vlac.lower(exp, dtype="bf16")
    for t in (1, 4):
        megatron = F.activation_bytes(s, 1, h, a, t, True, "selective")  # 34sbh/t
        assert F.layer_bytes(g, 1, "none", t, True) == pytest.approx(megatron * 32 / 34 + (4 * a * s + 16 * s) / t)
    # vlac's selective keeps the GEMM and attention outputs: x, q, k, v, attention (+lse), wo, w1, w2
    assert F.layer_bytes(g, 1, "selective") == 2 * s * h * (1 + 3 + 1 + 1 + 4 + 1) + 4 * a * s
