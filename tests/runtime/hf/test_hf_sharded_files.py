"""Checkpoints split over several safetensors files (an index.json names each tensor's file), in
both directions; and backbone.freeze keeps the language model out of the optimiser."""

import json

import torch
from hf_models import experiment, hf_class, reference_logits, save_tiny, vlac_text_logits

IDS = torch.tensor([[5, 17, 3, 90, 42, 0, 7]])


def test_import_from_shards_and_export_to_shards(tmp_path):
    from vlac.runtime.checkpoint import Checkpointer
    from vlac.runtime.hf.export import export
    from vlac.runtime.hf.load import load_pretrained
    from vlac.runtime.model import build_model
    from vlac.runtime.optim import build_optimizer

    _, model_cls, _ = hf_class("mixtral")
    src = save_tiny("mixtral", tmp_path / "one")
    model_cls.from_pretrained(src).save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    exp = experiment(tmp_path / "sharded", moe={"capacity_factor": None})
    model = build_model(exp)
    load_pretrained(model, exp)
    torch.testing.assert_close(vlac_text_logits(model, exp, IDS), reference_logits(src, IDS), atol=1e-5, rtol=0)

    step_dir = Checkpointer(tmp_path / "ckpt", 1, True).save(0, model, build_optimizer(model, exp), {})
    result = export(exp, step_dir, tmp_path / "out", max_shard_bytes=30_000)
    assert len(result["files"]) > 3 and (tmp_path / "out" / "model.safetensors.index.json").is_file()
    size = exp.modalities["text"].vocab_size
    torch.testing.assert_close(reference_logits(tmp_path / "out", IDS)[..., :size], reference_logits(src, IDS),
                               atol=1e-5, rtol=0)


def test_frozen_backbone_is_not_optimised(tmp_path):
    from vlac.runtime.model import build_model
    from vlac.runtime.optim import build_optimizer

    exp = experiment(save_tiny("llama", tmp_path / "l"), backbone={"freeze": True},
                     modalities={"text": {"kind": "text", "tokens": 10},
                                 "imu": {"kind": "continuous", "input_dim": 6, "tokens": 2}},
                     data={"mixture": [{"name": "t", "modalities": ["text", "imu"]}]})
    model = build_model(exp)
    optimised = {id(p) for group in build_optimizer(model, exp).param_groups for p in group["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in optimised}
    assert names and all(n.startswith("projectors.imu") for n in names), names
    assert not any(p.requires_grad for p in model.layers.parameters())
