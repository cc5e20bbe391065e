"""Tiny random Hugging Face decoders saved in a folder (built with transformers, never downloaded),
and the vlac experiments that start from them."""

from __future__ import annotations

from pathlib import Path

import torch

COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"rms_norm_eps": 1e-5}),
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
