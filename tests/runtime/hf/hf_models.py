"""Tiny random Hugging Face decoders and CLIP/SigLIP vision towers saved in a folder (built with
transformers, never downloaded), and the vlac experiments that start from them."""

from __future__ import annotations

from pathlib import Path

import torch

COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"rms_norm_eps": 1e-5}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 4}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16, "rope_theta": 1e6}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {"num_experts": 4, "num_experts_per_tok": 2,
                                                           "moe_intermediate_size": 24, "norm_topk_prob": True,
                                                           "head_dim": 8}),
}


def hf_class(family: str):
    import transformers

    config_cls, model_cls, extra = FAMILIES[family]
    return getattr(transformers, config_cls), getattr(transformers, model_cls), extra


def save_tiny(family: str, folder: Path, seed: int = 0, **overrides) -> Path:
    """A random tiny checkpoint of `family` in `folder`; non-default biases/norm gains so that a
    loader mixing them up shows in the logits."""
    config_cls, model_cls, extra = hf_class(family)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**COMMON, **extra, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


def experiment(folder: Path, **sections):
    """A text experiment whose backbone comes from the checkpoint in `folder`."""
    import vlac

    spec = {"name": "hf-tiny", "modalities": {"text": {"kind": "text", "tokenizer": "bpe", "tokens": 14}},
            "backbone": {"from_hf": str(folder), "context_length": 32},
            "data": {"mixture": [{"name": "t", "modalities": ["text"]}]},
            "vocab": {"pad_to_multiple": 16},
            "train": {"seq_len": 16, "global_batch_tokens": 64, "total_tokens": 640},
            "precision": {"dtype": "fp32"}, "cluster": {"nodes": 1, "gpus_per_node": 1}}
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return vlac.load(spec)


def reference_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def vlac_text_logits(model, exp, ids: torch.Tensor) -> torch.Tensor:
    """vlac's logits over the text range for the checkpoint's token ids."""
    from vlac.runtime.hf.vocab import text_range

    offset, size = text_range(exp)
    model.eval()
    with torch.no_grad():
        return model({"tokens": ids + offset})["logits"][..., offset:offset + size]


TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
             patch_size=8)


def save_tower(kind: str, folder: Path):
    """A random tiny vision tower of `kind` (clip, siglip, or clip-full: a whole CLIP model) saved in
    `folder`, non-default biases and norm gains; returns transformers' vision model of it."""
    import transformers

    torch.manual_seed(0)
    if kind == "clip-full":
        cfg = transformers.CLIPConfig(vision_config=TOWER, text_config=dict(hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, vocab_size=50))
        transformers.CLIPModel(cfg).save_pretrained(folder)
        return transformers.CLIPVisionModel.from_pretrained(folder).eval()
    config, model = {"clip": ("CLIPVisionConfig", "CLIPVisionModel"), "siglip": ("SiglipVisionConfig", "SiglipVisionModel")}[kind]
    m = getattr(transformers, model)(getattr(transformers, config)(**TOWER)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    m.save_pretrained(folder)
    return m


def llava_experiment(tower: Path, tokens: int = 16, **encoder):
    """A tiny LLaVA: the tower in `tower` (its penultimate layer, class token dropped) through an MLP
    projector in front of a question, loss on the answer."""
    import vlac

    return vlac.load({
        "name": "llava-tiny",
        "modalities": {"image": {"kind": "continuous", "signal": "vit_features", "input_dim": TOWER["hidden_size"],
                                 "tokens": tokens, "projector": "mlp", "encoder": {"hf": str(tower), **encoder}},
                       "question": {"kind": "text", "tokenizer": "byte", "vocab_size": 256, "tokens": 6},
                       "answer": {"kind": "text", "tokenizer": "byte", "vocab_size": 256, "tokens": 6,
                                  "shares_vocab_with": "question"}},
        "backbone": {"layers": 2, "hidden": 32, "heads": 4, "ffn_hidden": 64, "context_length": 48},
        "losses": {"ar": {"mask_prompt": True}},
        "data": {"mixture": [{"name": "instruct", "modalities": ["image", "question", "answer"]}]},
        "vocab": {"pad_to_multiple": 16},
        "optimizer": {"lr": 1e-2, "schedule": {"kind": "constant", "warmup_steps": 0}},
        "train": {"seq_len": 48, "global_batch_tokens": 96, "total_tokens": 960},
        "precision": {"dtype": "fp32"}, "cluster": {"nodes": 1, "gpus_per_node": 1}})
