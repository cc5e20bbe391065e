"""backbone.attention_chunk, attention_chunk_layers and attention_sinks: which layers each chunk
pattern names, the model the runtime builds from them, and errors that name the field, what is
wrong and the fix (a layer chunked and windowed at once among them)."""

from pathlib import Path

import pytest

import vlac
from vlac.runtime.model import build_model
from vlac.spec import SpecError

DENSE = Path(__file__).resolve().parents[2] / "examples" / "dense_text_1b.yaml"


def _load(*overrides):
    return vlac.load(DENSE, ["backbone.layers=8", *overrides], profile="tiny")


def test_llama4_pattern_chunks_three_layers_of_four():
    """Llama 4: no_rope_layers leaves every 4th layer global (NoPE), the others chunked."""
    bb = _load("backbone.attention_chunk=16", "backbone.attention_chunk_layers=global_every:4").backbone
    assert bb.chunk_layers() == (0, 1, 2, 4, 5, 6)
    assert [bb.chunk_at(i) for i in range(8)] == [16, 16, 16, 0, 16, 16, 16, 0]


def test_defaults_chunk_nothing_and_have_no_sinks():
    bb = _load().backbone
    assert bb.attention_chunk is None and bb.chunk_layers() == () and not bb.attention_sinks


def test_the_model_follows_the_fields():
    exp = _load("backbone.attention_chunk=16", "backbone.attention_chunk_layers=[1,3]",
                "backbone.sliding_window=4", "backbone.sliding_window_layers=[0,2]", "backbone.attention_sinks=true")
    model = build_model(exp)
    assert [(b.attn.window, b.attn.chunk) for b in model.layers][:4] == [(4, 0), (0, 16), (4, 0), (0, 16)]
    assert all(b.attn.sinks.weight.shape == (exp.backbone.heads,) for b in model.layers)


@pytest.mark.parametrize("overrides,says", [
    (["backbone.attention_chunk_layers=from:2"], ["backbone.attention_chunk_layers", "attention_chunk is null",
                                                   "set attention_chunk"]),
    (["backbone.attention_chunk=8", "backbone.attention_chunk_layers=every:2"],
     ["backbone.attention_chunk_layers", "'every:2' is not a layer pattern", '"global_every:N"']),
    (["backbone.attention_chunk=8", "backbone.attention_chunk_layers=[2,9]"],
     ["backbone.attention_chunk_layers", "[9] are outside the 8 layers", "0..7"]),
    (["backbone.attention_chunk=0"], ["backbone.attention_chunk", "greater than or equal to 1"]),
    (["backbone.attention_chunk=8", "backbone.sliding_window=4"],
     ["attention_chunk_layers", "sliding_window_layers", "not both", "disjoint"]),
])
def test_errors_name_the_field_the_problem_and_the_fix(overrides, says):
    with pytest.raises(SpecError) as err:
        _load(*overrides)
    for text in says:
        assert text in str(err.value)


def test_hugging_face_export_refuses_chunks_and_sinks_and_imports_set_neither(tmp_path):
    """No family vlac exports (Llama, Mistral, Qwen2/3, Mixtral, Qwen3-MoE) has attention chunks or
    sink logits: export names both fields; a checkpoint's backbone sets them off."""
    from vlac.runtime.hf.hf_config import inexpressible
    from vlac.spec.pretrained import backbone_fields

    exp = _load("backbone.attention_chunk=16", "backbone.attention_sinks=true")
    problems = inexpressible(exp)
    assert any(p.startswith("backbone.attention_chunk: ") and "attention_chunk: null" in p for p in problems)
    assert any(p.startswith("backbone.attention_sinks: ") and "attention_sinks: false" in p for p in problems)
    cfg = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
           "intermediate_size": 64}
    fields = backbone_fields(cfg)
    assert fields["attention_chunk"] is None and fields["attention_sinks"] is False
