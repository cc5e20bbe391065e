"""One reader checks a checkpoint's config.json for both the decoder (backbone.init.hf /
backbone.from_hf) and CLIP/SigLIP towers (encoder.hf): each refusal names the field, what is
wrong and the fix, in the words of that kind of checkpoint."""

import json

import pytest

from vlac.spec.hf_config_file import PretrainedError
from vlac.spec.modalities import tower_config
from vlac.spec.pretrained import read_config

DECODER = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2,
           "intermediate_size": 16, "vocab_size": 32}
TOWER = {"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 16,
         "image_size": 8, "patch_size": 4}


def _write(folder, config):
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


def _refusal(fn, *args) -> str:
    with pytest.raises(PretrainedError) as e:
        fn(*args)
    return str(e.value)


def test_a_missing_file_names_the_folder_as_written_and_what_writes_one(tmp_path):
    assert _refusal(read_config, tmp_path) == (
        f"backbone.init.hf: no config.json in {tmp_path}; point it at a folder written by transformers' "
        f"save_pretrained (config.json + *.safetensors)")
    assert _refusal(tower_config, f"{tmp_path}/", "encoder.hf") == (
        f"encoder.hf: no config.json in {tmp_path}/; point it at a folder written by transformers' "
        f"save_pretrained of a CLIP or SigLIP model")


def test_bad_json_and_a_foreign_model_type_are_refused_with_the_choices(tmp_path):
    _write(tmp_path, "{")
    assert _refusal(read_config, tmp_path, "backbone.from_hf") == (
        f"backbone.from_hf: {tmp_path / 'config.json'} is not valid JSON (Expecting property name enclosed in "
        f"double quotes at line 1)")
    _write(tmp_path, {"model_type": "clip"})
    assert _refusal(read_config, tmp_path).endswith(
        "model_type 'clip' in " + str(tmp_path / "config.json") + " is not a family vlac's decoder reproduces; "
        "choose a checkpoint of llama, mistral, qwen2, qwen3, mixtral, qwen3_moe")
    _write(tmp_path, DECODER)
    assert _refusal(tower_config, tmp_path, "encoder.hf").endswith(
        "model_type 'llama' in " + str(tmp_path / "config.json") + " is not a vision tower vlac reads; choose a "
        "CLIP or SigLIP checkpoint (model_type one of clip_vision_model, clip, siglip_vision_model, siglip)")


@pytest.mark.parametrize("config", ["[1]", {"model_type": ["clip"]}])
def test_a_config_of_the_wrong_shape_is_a_refusal_not_a_crash(tmp_path, config):
    _write(tmp_path, config)
    assert "is not a family vlac's decoder reproduces" in _refusal(read_config, tmp_path)
    assert "is not a vision tower vlac reads" in _refusal(tower_config, tmp_path, "encoder.hf")


def test_missing_keys_are_listed_in_the_order_the_kind_needs_them(tmp_path):
    moe = {**DECODER, "model_type": "qwen3_moe"}
    del moe["hidden_size"]
    _write(tmp_path, moe)
    assert _refusal(read_config, tmp_path) == (
        f"backbone.init.hf: {tmp_path / 'config.json'} lacks hidden_size, moe_intermediate_size, "
        f"num_experts_per_tok, num_experts, which a qwen3_moe config has; is the file complete?")
    _write(tmp_path, {**moe, "hidden_size": 8, "moe_intermediate_size": 4, "num_experts_per_tok": 2,
                      "num_local_experts": 4})  # either name of the expert count will do
    assert read_config(tmp_path)["num_local_experts"] == 4
    tower = {"model_type": "siglip", "vision_config": TOWER}  # a whole SigLIP model: its vision_config is read
    assert tower_config(_write(tmp_path, tower), "encoder.hf") == (TOWER, "siglip")
    _write(tmp_path, {"model_type": "clip_vision_model", **{k: v for k, v in TOWER.items() if k != "image_size"}})
    assert _refusal(tower_config, tmp_path, "encoder.hf") == (
        f"encoder.hf: {tmp_path / 'config.json'} lacks image_size of its vision config; is the file complete?")
