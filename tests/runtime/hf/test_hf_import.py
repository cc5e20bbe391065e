"""Importing tiny random Hugging Face decoders: vlac's logits equal transformers' (fp32, 1e-5)."""

import pytest
import torch

from vlac.spec import SpecError

from hf_models import FAMILIES, experiment, reference_logits, save_tiny, vlac_text_logits

IDS = torch.tensor([[5, 17, 3, 90, 42, 0, 7, 64, 11, 2, 33, 95]])


def _imported(family, tmp_path, **sections):
    from vlac.runtime.hf.load import load_pretrained
    from vlac.runtime.model import build_model

    folder = save_tiny(family, tmp_path / family)
    exp = experiment(folder, **sections)
    model = build_model(exp)
    report = load_pretrained(model, exp)
    return folder, exp, model, report


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(family, tmp_path):
    moe = {"moe": {"capacity_factor": None}} if family in ("mixtral", "qwen3_moe") else {}
    folder, exp, model, report = _imported(family, tmp_path, **moe)
    assert report["family"] == family
    torch.testing.assert_close(vlac_text_logits(model, exp, IDS), reference_logits(folder, IDS), atol=1e-5, rtol=0)


def test_random_init_does_not_match(tmp_path):
    """The comparison can fail: the same experiment without loading is far from the reference."""
    from vlac.runtime.model import build_model

    folder = save_tiny("qwen3", tmp_path / "q")
    exp = experiment(folder)
    diff = (vlac_text_logits(build_model(exp), exp, IDS) - reference_logits(folder, IDS)).abs().max()
    assert diff > 1e-2


def test_new_vocab_rows_follow_the_rule(tmp_path):
    """Text rows are the checkpoint's at the text offset; every other row is mean + small noise,
    the same on every call (seeded per row)."""
    from safetensors.torch import load_file

    folder, exp, model, _ = _imported("llama", tmp_path)
    hf = load_file(folder / "model.safetensors")["model.embed_tokens.weight"]
    emb = model.embed.weight.detach()
    offset = exp.vocab_layout().range_of("text").offset
    assert offset == len(exp.vocab.special_tokens) and emb.size(0) == exp.vocab_layout().padded
    torch.testing.assert_close(emb[offset:offset + hf.size(0)], hf)
    new = torch.cat([emb[:offset], emb[offset + hf.size(0):]])
    mean, std = hf.double().mean(0), hf.double().std(0, unbiased=False)
    assert (new.double() - mean).abs().max() <= 0.01 * 6 * std.max()  # 6 sigma of the noise
    assert (new[1:] - new[:-1]).abs().sum() > 0  # the noise breaks the symmetry between new rows
    again = _imported("llama", tmp_path / "again")[2].embed.weight.detach()
    assert torch.equal(again, emb)


def test_mismatched_field_names_field_and_fix(tmp_path):
    folder = save_tiny("qwen3", tmp_path / "q")
    with pytest.raises(SpecError) as err:
        experiment(folder, backbone={"heads": 8, "qk_norm": False})
    text = str(err.value)
    assert "backbone.heads: 8 differs from 4" in text and "backbone.qk_norm: False differs from True" in text
    assert "from_hf" in text


def test_init_checks_every_field_and_vocab(tmp_path):
    """init: {hf} (instead of from_hf) checks the spec's own fields against config.json."""
    import vlac

    folder = save_tiny("llama", tmp_path / "l")
    spec = {"name": "x", "modalities": {"text": {"kind": "text", "vocab_size": 100, "tokens": 14}},
            "backbone": {"layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "ffn_hidden": 48, "norm_eps": 1e-5,
                         "rope_theta": 10000.0, "context_length": 32, "init": {"hf": str(folder)}},
            "data": {"mixture": [{"name": "t", "modalities": ["text"]}]},
            "train": {"seq_len": 16, "global_batch_tokens": 64, "total_tokens": 640}}
    with pytest.raises(SpecError) as err:
        vlac.load(spec)
    assert "modalities.text.vocab_size: 100 differs from the checkpoint's text vocabulary of 96 rows" in str(err.value)
    spec["modalities"]["text"]["vocab_size"] = 96
    assert vlac.load(spec).backbone.init.hf == str(folder)


def test_unsupported_checkpoints_are_refused(tmp_path):
    folder = save_tiny("qwen3_moe", tmp_path / "m", norm_topk_prob=False)
    with pytest.raises(SpecError, match="norm_topk_prob: false"):
        experiment(folder)
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(SpecError, match="model_type 'gpt2'.*choose a checkpoint of llama"):
        experiment(tmp_path / "gpt2")
