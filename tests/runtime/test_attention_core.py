"""Attention and LatentAttention share AttentionCore (runtime/layers.py) for their attend-only
state: what they hold is what they held before it existed. The state_dict (keys, shapes, order)
and the seeded initial values of each case were recorded from the code of commit b9dc6d9, where
LatentAttention skipped Attention.__init__ and set the same attributes by hand: a checkpoint, a
seeded run and the parameter order the optimizer and FSDP see stay the same."""

import pytest
import torch

import vlac
from vlac.runtime.layers import Attention, AttentionCore
from vlac.runtime.mla import LatentAttention

from runtime_helpers import TINY

MLA = "backbone.mla={q_lora_rank: 24, kv_lora_rank: 12, qk_rope_head_dim: 8, qk_nope_head_dim: 6, v_head_dim: 10}"
MLA_NO_Q_LATENT = "backbone.mla={q_lora_rank: null, kv_lora_rank: 12, qk_rope_head_dim: 4, qk_nope_head_dim: 6, v_head_dim: 5}"

# case -> (class, spec overrides, constructor keywords, the attend state, state_dict rows (key, shape, sum, first value)
# after torch.manual_seed(0)); recorded at b9dc6d9
RECORDED = {
    "gqa-sinks-qknorm-bias": (
        Attention, ["moe=null", "backbone.qk_norm=true", "backbone.bias=true", "backbone.kv_heads=2"],
        {"sinks": True, "window": 3}, (4, 2, True, 3, 0), [
            ("sinks.weight", (4,), -0.007256, 0.03082), ("wq.weight", (64, 64), -4.816686, -0.011093),
            ("wq.bias", (64,), -0.044408, 0.116177), ("wk.weight", (32, 64), -0.173406, -0.019001),
            ("wk.bias", (32,), -0.093621, -0.112532), ("wv.weight", (32, 64), 2.234204, -0.05878),
            ("wv.bias", (32,), 0.563028, 0.091291), ("wo.weight", (64, 64), 7.25051, 0.054289),
            ("wo.bias", (64,), 0.298092, -0.041813), ("q_norm.weight", (16,), 16.0, 1.0),
            ("k_norm.weight", (16,), 16.0, 1.0)]),
    "plain-bidirectional": (
        Attention, ["moe=null"], {"causal": False}, (4, 2, False, 0, 0), [
            ("wq.weight", (64, 64), -4.854797, -0.000936), ("wk.weight", (32, 64), 1.266771, 0.090931),
            ("wv.weight", (32, 64), 1.551775, -0.047961), ("wo.weight", (64, 64), 6.754087, -0.004168)]),
    "mla-q-latent-bias": (
        LatentAttention, ["moe=null", "backbone.kv_heads=null", "backbone.bias=true", MLA], {"chunk": 4},
        (4, 4, True, 0, 4), [
            ("latent.wq_down.weight", (24, 64), -1.291701, -0.000936), ("latent.wq_down.bias", (24,), -0.008324, -0.041563),
            ("latent.q_norm.weight", (24,), 24.0, 1.0), ("latent.wkv_down.weight", (20, 64), -1.208679, 0.025652),
            ("latent.wkv_down.bias", (20,), -0.312366, 0.042984), ("latent.kv_norm.weight", (12,), 12.0, 1.0),
            ("wq_up.weight", (56, 24), -3.655668, 0.013141), ("wq_up.bias", (56,), 0.307095, -0.087621),
            ("wkv_up.weight", (64, 12), -6.058161, -0.221125), ("wkv_up.bias", (64,), 0.098675, 0.220731),
            ("wo.weight", (64, 40), 6.102128, 0.132855), ("wo.bias", (64,), -0.828275, -0.057446)]),
    "mla-direct-q": (
        LatentAttention, ["moe=null", "backbone.kv_heads=null", MLA_NO_Q_LATENT], {}, (4, 4, True, 0, 0), [
            ("latent.wkv_down.weight", (16, 64), -0.053144, -0.000936), ("latent.kv_norm.weight", (12,), 12.0, 1.0),
            ("wq.weight", (40, 64), -4.742065, -0.008758), ("wkv_up.weight", (44, 12), -0.22605, -0.225195),
            ("wo.weight", (64, 20), -1.65324, -0.185387)]),
}


@pytest.mark.parametrize("case", list(RECORDED))
def test_state_dict_order_shapes_and_seeded_init_are_as_recorded(case):
    cls, overrides, kwargs, attend_state, rows = RECORDED[case]
    torch.manual_seed(0)
    attn = cls(vlac.load(TINY, overrides).backbone, **kwargs)
    assert isinstance(attn, AttentionCore)
    state = attn.state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == [(k, shape) for k, shape, _, _ in rows]
    assert [n for n, _ in attn.named_parameters()] == [k for k, *_ in rows]  # the optimizer's and FSDP's order
    for key, _, total, first in rows:
        assert float(state[key].double().sum()) == pytest.approx(total, abs=2e-6), key
        assert float(state[key].flatten()[0]) == pytest.approx(first, abs=2e-6), key
    assert (attn.n_heads, attn.n_kv, attn.causal, attn.window, attn.chunk) == attend_state
    assert (attn.kv_cache, attn.kv_gather, attn.token_positions, attn.dropout) == (None, None, None, 0.0)
    assert [n for n, _ in attn.named_buffers()] == ["rotary.cos", "rotary.sin"]  # non-persistent: not in state


def test_the_sink_query_scale_is_sdpas_default_for_the_query_width():
    """AttentionCore states the scale the sink query needs: 1/sqrt(d_head) for Attention, as
    before; 1/sqrt(nope + rope) for latent attention, DeepSeek's scale."""
    assert Attention(vlac.load(TINY, ["moe=null"]).backbone).softmax_scale == 16 ** -0.5
    latent = LatentAttention(vlac.load(TINY, ["moe=null", "backbone.kv_heads=null", MLA]).backbone)
    assert latent.softmax_scale == (6 + 8) ** -0.5


@pytest.mark.parametrize("cls, overrides", [(Attention, ["moe=null"]),
                                            (LatentAttention, ["moe=null", "backbone.kv_heads=null", MLA])])
def test_both_refuse_a_window_without_causality_and_a_window_beside_a_chunk(cls, overrides):
    bb = vlac.load(TINY, overrides).backbone
    with pytest.raises(ValueError, match="applies to causal attention"):
        cls(bb, causal=False, window=3)
    with pytest.raises(ValueError, match="not both"):
        cls(bb, window=3, chunk=4)
