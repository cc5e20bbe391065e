"""backbone.mla: DeepSeek-V3's widths by default, the head shape the cost model reads, and errors
that name the field, what is wrong and the fix."""

from pathlib import Path

import pytest

import vlac
from vlac.spec import SpecError
from vlac.spec.latent_attention import HeadShape, head_shape

DENSE = Path(__file__).resolve().parents[2] / "examples" / "dense_text_1b.yaml"


def _backbone(*overrides):
    return vlac.load(DENSE, ["backbone.kv_heads=null", *overrides], profile="tiny").backbone


def test_defaults_are_deepseek_v3s():
    m = _backbone("backbone.mla={}").mla
    assert (m.q_lora_rank, m.kv_lora_rank, m.qk_rope_head_dim, m.qk_nope_head_dim, m.v_head_dim) == (1536, 512, 64, 128, 128)
    assert m.qk_head_dim == 192


def test_head_shape_of_standard_and_latent_attention():
    assert head_shape(_backbone()) == HeadShape(heads=4, kv_heads=4, qk_dim=16, v_dim=16, rope_dim=16)
    gqa = vlac.load(DENSE, profile="tiny").backbone
    assert head_shape(gqa) == HeadShape(4, 2, 16, 16, 16)
    bb = _backbone("backbone.mla={q_lora_rank: null, kv_lora_rank: 8, qk_rope_head_dim: 4, qk_nope_head_dim: 6, v_head_dim: 10}")
    assert bb.mla.q_lora_rank is None and head_shape(bb) == HeadShape(4, 4, 10, 10, 4)


@pytest.mark.parametrize("overrides,says", [
    (["backbone.mla={qk_rope_head_dim: 7}"], ["backbone.mla.qk_rope_head_dim", "7 is odd", "such as 8"]),
    (["backbone.mla={kv_lora_rank: 0}"], ["backbone.mla.kv_lora_rank", "greater than or equal to 1"]),
    (["backbone.mla={ranks: 4}"], ["backbone.mla.ranks", "unknown key", "kv_lora_rank"]),
    (["backbone.mla={}", "backbone.kv_heads=2"], ["backbone.kv_heads", "with mla", "leave kv_heads out"]),
    (["backbone.mla={}", "backbone.positions=learned"], ["backbone.mla", "needs positions: rope", "mla: null"]),
    (["backbone.mla={}", "backbone.qk_norm=true"], ["backbone.qk_norm", "set qk_norm: false"]),
    (["backbone.mla={}", "backbone.qkv_bias=true"], ["backbone.qkv_bias", "set qkv_bias: false"]),
    (["backbone.mla={}", "backbone.attention_sinks=true"], ["backbone.attention_sinks", "set attention_sinks: false"]),
])
def test_errors_name_the_field_the_problem_and_the_fix(overrides, says):
    with pytest.raises(SpecError) as err:
        _backbone(*overrides)
    for text in says:
        assert text in str(err.value)


def test_pretrained_init_and_export_refuse_latent_attention():
    from vlac.runtime.hf.hf_config import inexpressible

    exp = vlac.load(DENSE, ["backbone.kv_heads=null", "backbone.mla={}"], profile="tiny")
    assert any(p.startswith("backbone.mla:") for p in inexpressible(exp))
    with pytest.raises(SpecError, match=r"\(backbone.mla\): backbone.init reads"):
        vlac.load(DENSE, ["backbone.kv_heads=null", "backbone.mla={}", "backbone.init={hf: /nonexistent}"],
                  profile="tiny")
