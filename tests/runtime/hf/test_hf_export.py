"""Export: a vlac checkpoint -> a Hugging Face checkpoint that transformers loads with the same logits."""

import json

import pytest
import torch
from hf_models import experiment, reference_logits, save_tiny, vlac_text_logits

IDS = torch.tensor([[5, 17, 3, 90, 42, 0, 7, 64, 11, 2, 33, 95]])


def save_run(exp, folder, perturb: bool = False):
    """Load the pretrained backbone into one process's model and save a step-0 checkpoint."""
    from vlac.runtime.checkpoint import Checkpointer
    from vlac.runtime.hf.load import load_pretrained
    from vlac.runtime.model import build_model
    from vlac.runtime.optim import build_optimizer

    model = build_model(exp)
    load_pretrained(model, exp)
    if perturb:  # as if trained: the export must carry vlac's weights, not the starting checkpoint's
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
    ckpt = Checkpointer(folder / "run" / "checkpoints", keep_last=1, is_main=True)
    return model, ckpt.save(0, model, build_optimizer(model, exp), {"experiment": exp.name})


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mixtral", "qwen3_moe"])
def test_export_loads_in_transformers_with_vlac_logits(family, tmp_path):
    from vlac.runtime.hf.export import export
    from vlac.runtime.hf.vocab import export_order

    moe = {"moe": {"capacity_factor": None}} if family in ("mixtral", "qwen3_moe") else {}
    exp = experiment(save_tiny(family, tmp_path / "src"), **moe)
    model, step_dir = save_run(exp, tmp_path, perturb=True)
    result = export(exp, step_dir, tmp_path / "out")
    assert result["family"] == family
    # every vocabulary row, in the exported order: the text ids are the checkpoint's ids
    offset = exp.vocab_layout().range_of("text").offset
    model.eval()
    with torch.no_grad():
        ours = model({"tokens": IDS + offset})["logits"][..., export_order(exp)]
    torch.testing.assert_close(reference_logits(tmp_path / "out", IDS), ours, atol=1e-5, rtol=0)


def test_round_trip_reimports_to_the_same_logits(tmp_path):
    """Export without training, then start a new experiment from the export: same text logits."""
    from vlac.runtime.hf.export import export

    src = save_tiny("qwen3", tmp_path / "src")
    exp = experiment(src)
    _, step_dir = save_run(exp, tmp_path)
    export(exp, step_dir, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["vocab_size"] == exp.vocab_layout().padded and config["model_type"] == "qwen3"
    again = experiment(tmp_path / "out", modalities={"text": {"kind": "text", "tokens": 14,
                                                              "vocab_size": exp.modalities["text"].vocab_size}})
    from vlac.runtime.hf.load import load_pretrained
    from vlac.runtime.model import build_model

    model = build_model(again)
    load_pretrained(model, again)
    torch.testing.assert_close(vlac_text_logits(model, again, IDS), reference_logits(src, IDS), atol=1e-5, rtol=0)


def test_card_tokenizer_and_modules(tmp_path):
    """The model card lists the vocabulary layout and the spec; tokenizer files are copied;
    vlac's other modules (an action projector here) go to vlac_modules.safetensors."""
    from safetensors import safe_open

    from vlac.runtime.hf.export import export

    src = save_tiny("llama", tmp_path / "src")
    (src / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    exp = experiment(src, modalities={"text": {"kind": "text", "tokens": 12},
                                      "imu": {"kind": "continuous", "input_dim": 6, "tokens": 1}},
                     data={"mixture": [{"name": "t", "modalities": ["text", "imu"]}]})
    _, step_dir = save_run(exp, tmp_path)
    result = export(exp, step_dir, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| 0..95 | 96 | text (the checkpoint's text tokens) |" in card
    assert "| 96..103 | 8 | special tokens <pad> <bos>" in card and "name: hf-tiny" in card
    assert result["copied"] == ["tokenizer_config.json", "generation_config.json"]
    with safe_open(tmp_path / "out" / "vlac_modules.safetensors", "pt") as f:
        assert any(k.startswith("projectors.imu") for k in f.keys())


def test_export_refuses_what_no_family_computes(tmp_path):
    import vlac
    from vlac.runtime.hf.hf_config import hf_config

    exp = vlac.load({"name": "g", "modalities": {"text": {"kind": "text", "vocab_size": 64, "tokens": 8}},
                     "backbone": {"layers": 1, "hidden": 32, "heads": 4, "mlp": "gelu", "norm": "layernorm"},
                     "data": {"mixture": [{"name": "t", "modalities": ["text"]}]}})
    with pytest.raises(ValueError, match="backbone.mlp: 'gelu'.*\n.*backbone.norm: 'layernorm'"):
        hf_config(exp, "float32")


def test_reimport_of_an_export_restores_the_added_rows(tmp_path):
    """A checkpoint vlac exported, imported by an experiment of the same vocabulary layout, gives
    back every row: the specials and other modalities' rows too, not a fresh initialisation."""
    from vlac.runtime.hf.export import export
    from vlac.runtime.hf.load import load_pretrained
    from vlac.runtime.model import build_model

    exp = experiment(save_tiny("llama", tmp_path / "src"))
    model, step_dir = save_run(exp, tmp_path, perturb=True)
    export(exp, step_dir, tmp_path / "out")
    again = experiment(tmp_path / "out")
    assert again.modalities["text"].vocab_size == exp.modalities["text"].vocab_size
    reloaded = build_model(again)
    report = load_pretrained(reloaded, again)
    assert report["new_vocab_rows"] == 0
    torch.testing.assert_close(reloaded.embed.weight, model.embed.weight)
    torch.testing.assert_close(reloaded.head.weight, model.head.weight)


def test_export_casts_on_request(tmp_path):
    from safetensors import safe_open

    from vlac.runtime.hf.export import export

    exp = experiment(save_tiny("llama", tmp_path / "src"))
    _, step_dir = save_run(exp, tmp_path)
    with pytest.raises(ValueError, match="--dtype: 'int8'; choose one of fp32, bf16, fp16"):
        export(exp, step_dir, tmp_path / "bad", dtype="int8")
    export(exp, step_dir, tmp_path / "out", dtype="bf16")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
