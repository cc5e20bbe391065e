"""Hostile spec input found by fuzzing, each refused with a message naming the field and the fix:
names (the example offered is itself accepted), a checkpoint's config.json values, numbers no
field bounded, a huge count, a kind with a newline, cluster files, keys written twice."""

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vlac.cli import app
from vlac.spec import SpecError, load
from vlac.spec.base import check_identifier, check_name


def _example(check, value):
    with pytest.raises(ValueError) as e:
        check(value)
    return re.search(r"e\.g\. (\S+)$", str(e.value)).group(1)


@pytest.mark.parametrize("check,value", [(check_identifier, "téxt"), (check_identifier, "漢字"),
                                         (check_identifier, "x" * 150), (check_name, "a...b"),
                                         (check_name, "a....b"), (check_name, "x" * 150 + "!")])
def test_the_offered_name_is_accepted(check, value):
    suggestion = _example(check, value)
    assert check(suggestion) == suggestion


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.sampled_from([check_name, check_identifier]), st.text(max_size=150))
def test_every_refused_name_offers_an_accepted_one(check, value):
    try:
        check(value)
    except ValueError:
        suggestion = _example(check, value)
        assert check(suggestion) == suggestion


# ---- a checkpoint's config.json: every value vlac reads is type- and range-checked -----------------


LLAMA = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256, "rms_norm_eps": 1e-5,
         "rope_theta": 10000.0, "tie_word_embeddings": False, "max_position_embeddings": 128, "hidden_act": "silu"}
QWEN3_MOE = {**LLAMA, "model_type": "qwen3_moe", "moe_intermediate_size": 32, "num_experts_per_tok": 2,
             "num_experts": 4, "norm_topk_prob": True, "mlp_only_layers": []}
CLIP = {"model_type": "clip", "vision_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                                "intermediate_size": 64, "image_size": 16, "patch_size": 4}}
DECODER_SPEC = """name: hf
modalities:
  text: {kind: text, tokenizer: byte, vocab_size: 256, tokens: 8}
backbone: {from_hf: %s}
data: {mixture: [{name: d, modalities: [text], generator: synthetic}]}
train: {seq_len: 32, global_batch_tokens: 256, total_tokens: 2560}
"""
TOWER_SPEC = """name: tw
modalities:
  text: {kind: text, tokenizer: byte, vocab_size: 256, tokens: 8}
  vit: {kind: continuous, signal: vit_features, input_dim: 32, tokens: 16, encoder: {hf: %s}}
backbone: {layers: 2, hidden: 64, heads: 4, ffn_hidden: 128, context_length: 64}
data: {mixture: [{name: d, modalities: [text, vit], generator: synthetic}]}
train: {seq_len: 32, global_batch_tokens: 256, total_tokens: 2560}
"""


def _validate(tmp_path, config, spec_text):
    folder = tmp_path / "ckpt"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text % folder)
    return CliRunner().invoke(app, ["validate", str(spec)])


@pytest.mark.parametrize("base,key,value", [
    (LLAMA, "vocab_size", None), (LLAMA, "rms_norm_eps", []), (LLAMA, "rope_theta", None), (LLAMA, "layer_types", True),
    (LLAMA, "rope_scaling", "x"), (LLAMA, "rope_parameters", [1]), (LLAMA, "hidden_size", True),
    (LLAMA, "num_attention_heads", 0), (QWEN3_MOE, "num_hidden_layers", "x"), (QWEN3_MOE, "num_experts_per_tok", "2"),
    (QWEN3_MOE, "mlp_only_layers", [[1]]), (QWEN3_MOE, "decoder_sparse_step", "x"),
    ({**LLAMA, "model_type": "mistral", "sliding_window": 4}, "num_hidden_layers", 2**40),
    ({**LLAMA, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4}, "max_window_layers", "x"),
])
def test_a_decoder_config_value_of_the_wrong_type_names_the_key(tmp_path, base, key, value):
    r = _validate(tmp_path, {**base, key: value}, DECODER_SPEC)
    assert r.exit_code == 2, r.output
    assert "internal error" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit))
    assert "backbone.from_hf" in r.stderr and f"{key} = " in r.stderr and "config.json" in r.stderr, r.stderr


@pytest.mark.parametrize("vision", [[1], {**CLIP["vision_config"], "patch_size": 0},
                                    {**CLIP["vision_config"], "image_size": "16"}])
def test_a_tower_config_of_the_wrong_shape_names_the_field(tmp_path, vision):
    r = _validate(tmp_path, {**CLIP, "vision_config": vision}, TOWER_SPEC)
    assert r.exit_code == 2, r.output
    assert "internal error" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit))
    assert "encoder.hf" in r.stderr and "vision_config" in r.stderr, r.stderr


@pytest.mark.parametrize("base,spec_text", [(LLAMA, DECODER_SPEC), (QWEN3_MOE, DECODER_SPEC), (CLIP, TOWER_SPEC)])
def test_a_well_formed_config_still_validates(tmp_path, base, spec_text):
    r = _validate(tmp_path, {**base, "rope_scaling": None, "head_dim": None} if base is not CLIP else base, spec_text)
    assert r.exit_code == 0, r.output


# ---- numbers no field bounded: each is now refused naming the field ------------------------------


TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"


@pytest.mark.parametrize("override,field", [
    ("losses.ar.modality_weights.text=-1", "losses.ar.modality_weights.text"),
    ("losses.ar.modality_weights.text=1e30", "losses.ar.modality_weights.text"),
    ("modalities.action.low=-1e300", "modalities.action.low"),
    ("modalities.action.high=1e300", "modalities.action.high"),
    ("backbone.init={hf: x, new_row_noise: 1e300}", "backbone.init.new_row_noise"),
    ("data.mixture[0].source={kind: lerobot, root: x, fields: {action: action}, episodes: [-1]}",
     "data.mixture[0].source.episodes[0]"),
    ("data.mixture[0].source={kind: lerobot, root: x, fields: {action: action}, frame_stride: 1e30}",
     "data.mixture[0].source.frame_stride"),
])
def test_an_unbounded_number_is_refused_naming_the_field(override, field):
    with pytest.raises(SpecError) as e:
        load(TINY, [override])
    assert field in [i.path for i in e.value.issues], str(e.value)


@pytest.mark.parametrize("override,field", [
    ("cluster.gpus_per_node=1000000000000000000000000000000", "cluster.gpus_per_node"),  # was named cluster.nodes
    ("precision.fp8.amax_history_len=1000000000000000000000000000000", "precision.fp8.amax_history_len"),  # accepted
])
def test_a_huge_count_is_refused_naming_its_own_field(override, field):
    with pytest.raises(SpecError) as e:
        load(TINY, [override])
    assert field in [i.path for i in e.value.issues], str(e.value)


def test_a_kind_with_a_newline_stays_on_one_line():
    import yaml

    data = yaml.safe_load(TINY.read_text())
    data["modalities"]["image"]["kind"] = "x\n- y"
    with pytest.raises(SpecError) as e:
        load(data)
    text = str(e.value)
    assert text.count("\n") == 1 and "modalities.image: 'x\\n- y' is not a valid kind; choose one of 'text'" in text, text


def test_a_cluster_file_names_its_fields_as_a_spec_does(tmp_path):
    from vlac.spec.loader import load_cluster

    with pytest.raises(SpecError) as e:
        load_cluster({"gpus_per_node": 2**40, "gpu": {"memory": "x"}}, "c.yaml")
    assert [i.path for i in e.value.issues] == ["cluster.gpus_per_node", "cluster.gpu.memory"], str(e.value)


# ---- a key written twice: refused, not silently the last one ------------------------------------

@pytest.mark.parametrize("name,text,says", [
    ("dup.yaml", "name: a\nname: b\n", "key 'name' appears twice in one mapping (first at line 1)"),
    ("dup_nested.yaml", "name: a\nbackbone: {layers: 2, layers: 3}\n", "key 'layers' appears twice"),
    ("dup.json", '{"name": "a", "name": "b"}', "key 'name' appears twice in one mapping"),
])
def test_a_duplicate_key_is_refused_naming_it(tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SpecError) as e:
        load(path)
    assert says in str(e.value) and str(path) in str(e.value), str(e.value)


def test_a_duplicate_key_in_an_override_names_the_override():
    with pytest.raises(SpecError) as e:
        load(TINY, ["backbone={layers: 2, layers: 3}"])
    assert e.value.issues[0].origin == "--set backbone={layers: 2, layers: 3}" and "appears twice" in str(e.value)


def test_a_merge_key_may_still_be_overridden(tmp_path):
    from vlac.spec.spec_files import read_mapping

    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {layers: 2, hidden: 64}\nbackbone:\n  <<: *b\n  layers: 3\n")
    assert read_mapping(path)["backbone"] == {"layers": 3, "hidden": 64}


@pytest.mark.parametrize("value", ["5", "null", "[a]", '""'])
def test_from_hf_that_is_not_a_path_is_named_not_read_as_a_folder(value):
    with pytest.raises(SpecError) as e:
        load(TINY, [f"backbone.from_hf={value}"])
    assert "backbone.from_hf" in [i.path for i in e.value.issues] and "is not a folder" in str(e.value), str(e.value)
