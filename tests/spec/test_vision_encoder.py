"""`modalities.<m>.encoder: {hf: PATH}` is checked against the tower's config.json when the spec
is read: each disagreement is one error at its field, saying what is wrong and how to fix it, and
a relative path is read from the spec file's folder. Only config.json is needed (no weights)."""

import json
from pathlib import Path

import pytest

import vlac
from vlac.spec import SpecError

CLIP = {"model_type": "clip_vision_model", "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
        "intermediate_size": 64, "image_size": 32, "patch_size": 8}


def _spec(tower, **image):
    return {"name": "llava-tiny",
            "modalities": {"image": {"kind": "continuous", "signal": "vit_features", "input_dim": 32, "tokens": 16,
                                     "encoder": {"hf": str(tower)}, **image},
                           "text": {"kind": "text", "tokenizer": "byte", "vocab_size": 256, "tokens": 8}},
            "backbone": {"layers": 1, "hidden": 32, "heads": 4, "ffn_hidden": 64, "context_length": 64},
            "data": {"mixture": [{"name": "m", "modalities": ["image", "text"]}]},
            "train": {"seq_len": 32, "global_batch_tokens": 64}}


def _messages(spec) -> list[str]:
    with pytest.raises(SpecError) as e:
        vlac.load(spec)
    return [f"{i.path}: {i.message}" for i in e.value.issues]


@pytest.fixture
def clip(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CLIP))
    return tmp_path


def test_a_matching_tower_is_accepted_with_llava_defaults(clip):
    enc = vlac.load(_spec(clip)).modalities["image"].encoder
    assert (enc.layer, enc.drop_class_token, enc.freeze) == (-2, True, True)


def test_mismatches_name_their_field_and_the_fix(clip):
    msgs = _messages(_spec(clip, input_dim=48, tokens=17, encoder={"hf": str(clip), "layer": 3}))
    assert any(m.startswith("modalities.image.input_dim:") and "hidden_size 32" in m and "set input_dim: 32" in m
               for m in msgs), msgs
    assert any(m.startswith("modalities.image.tokens:") and "16 patches" in m and "set tokens: 16" in m for m in msgs), msgs
    assert any(m.startswith("modalities.image.encoder.layer:") and "-3..2" in m for m in msgs), msgs


def test_the_class_token_counts_when_kept(clip):
    msgs = _messages(_spec(clip, encoder={"hf": str(clip), "drop_class_token": False}))
    assert any("plus the class token" in m and "set tokens: 17" in m for m in msgs), msgs
    assert vlac.load(_spec(clip, tokens=17, encoder={"hf": str(clip), "drop_class_token": False}))


def test_siglip_has_no_class_token_and_a_whole_model_config_is_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip", "vision_config": CLIP}))
    assert vlac.load(_spec(tmp_path, encoder={"hf": str(tmp_path), "drop_class_token": False}))


@pytest.mark.parametrize("config,expect", [
    (None, "no config.json in"), ("{", "is not valid JSON"), ({"model_type": "llama"}, "choose a CLIP or SigLIP"),
    ({"model_type": "clip_vision_model", "hidden_size": 32}, "lacks num_hidden_layers")])
def test_unreadable_towers_are_refused_at_encoder(config, expect, tmp_path):
    if config is not None:
        (tmp_path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    msgs = _messages(_spec(tmp_path))
    assert any(m.startswith("modalities.image.encoder") and expect in m for m in msgs), msgs


def test_a_tower_needs_vit_features_and_no_flow_matching(clip):
    assert any(m.startswith("modalities.image.encoder:") and "signal: vit_features" in m
               for m in _messages(_spec(clip, signal="imu")))
    spec = _spec(clip)
    spec["losses"] = {"flow_matching": {"modality": "image", "patch_dim": 32}}
    assert any(m.startswith("losses.flow_matching.modality:") and "remove the encoder" in m for m in _messages(spec))


def test_a_relative_path_is_read_from_the_spec_files_folder(tmp_path, monkeypatch):
    """Made absolute against the spec file's folder (given by a relative path here), so the
    emitted program finds the tower from its own folder."""
    import yaml

    (tmp_path / "tower").mkdir()
    (tmp_path / "tower" / "config.json").write_text(json.dumps(CLIP))
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(_spec("tower")))
    monkeypatch.chdir(tmp_path / "tower")  # elsewhere: "tower" is not read from the working directory
    assert vlac.load(Path("..") / "exp.yaml").modalities["image"].encoder.hf == str((tmp_path / "tower").resolve())


def test_prepared_sources_cannot_feed_a_tower_yet(clip):
    """Prepared shards store a continuous modality as features, never pixels: refused at the source."""
    spec = _spec(clip)
    spec["data"]["mixture"][0]["source"] = {"kind": "webdataset", "pattern": "/data/shard-{0..9}.tar",
                                            "fields": {"image": "png", "text": "txt"}}
    assert any(m.startswith("data.mixture[0].source:") and "['image'] read pixels" in m for m in _messages(spec))
