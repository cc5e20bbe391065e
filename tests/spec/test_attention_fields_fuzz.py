"""Hostile and random values of the attention fields (backbone.mla, attention_chunk,
attention_sinks, head_dim) and losses.mtp: every spec either is refused with a SpecError naming
the field, or lowers and plans without a crash."""

from pathlib import Path

import pytest

import vlac
from vlac.spec import SpecError

DENSE = Path(__file__).resolve().parents[2] / "examples" / "dense_text_1b.yaml"


@pytest.mark.parametrize("overrides,field", [
    (["backbone.head_dim=3"], "backbone.head_dim"),
    (["backbone.heads=64"], "backbone.heads"),  # hidden 64 / 64 heads = 1 channel a head
    (["backbone.head_dim=1", "backbone.kv_heads=null", "losses.mtp={}"], "backbone.head_dim"),
])
def test_an_odd_head_width_with_rope_is_refused_naming_the_field(overrides, field):
    # RoPE rotates channel pairs: this used to pass `validate` and crash lowering inside apply_rope
    with pytest.raises(SpecError) as err:
        vlac.load(DENSE, overrides, profile="tiny")
    assert f"({field})" in str(err.value) and "odd" in str(err.value)


def test_an_odd_head_width_is_fine_without_rope_or_with_mla():
    vlac.lower(vlac.load(DENSE, ["backbone.head_dim=3", "backbone.positions=learned"], profile="tiny"))
    mla = "backbone.mla={q_lora_rank: 8, kv_lora_rank: 8, qk_rope_head_dim: 2, qk_nope_head_dim: 1, v_head_dim: 1}"
    vlac.lower(vlac.load(DENSE, ["backbone.kv_heads=null", "backbone.head_dim=3", mla], profile="tiny"))
