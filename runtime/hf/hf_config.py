"""The config.json of an exported checkpoint: vlac's backbone as a Hugging Face family's config.

The family is the one the run started from (`backbone.init`), else the one that expresses the
backbone: MoE with QK-norm -> qwen3_moe, MoE -> mixtral, QK-norm -> qwen3, q/k/v biases -> qwen2,
a sliding window -> mistral, else llama. A sliding window is written as each family reads it:
Qwen2/Qwen3 per layer (`layer_types`), Mistral, Mixtral and Qwen3-MoE on every layer.
What no family computes (GELU, LayerNorm, learned positions, all-linear biases, shared
experts, sigmoid routers, dual-stream weights, attention chunks and sinks) is refused with the field to change.
"""

from __future__ import annotations

from typing import Any

from vlac.spec import Experiment
from vlac.spec.pretrained import read_config

from .vocab import exported_layout, text_range

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM", "mistral": "MistralForCausalLM"}
PER_LAYER_WINDOWS = ("qwen2", "qwen3")  # families whose config names each layer's attention (layer_types)
CARRIED = ("bos_token_id", "eos_token_id", "pad_token_id")  # token ids keep their meaning (text rows first)
CONFIG_DTYPES = ("float32", "bfloat16", "float16")  # what transformers' config.json `dtype` names


def config_dtype(dtype) -> str:
    """config.json's `dtype` for saved weights of torch dtype `dtype` (float32 for any other)."""
    name = str(dtype).removeprefix("torch.")
    return name if name in CONFIG_DTYPES else "float32"


def inexpressible(exp: Experiment) -> list[str]:
    bb, moe = exp.backbone, exp.moe
    out = []
    for field, value, want in (("mlp", bb.mlp, "swiglu"), ("norm", bb.norm, "rmsnorm"), ("positions", bb.positions, "rope"),
                               ("bias", bb.bias, False)):
        if value != want:
            out.append(f"backbone.{field}: {value!r}; Hugging Face's Llama-style families need {want!r}")
    if bb.attention_chunk is not None:
        out.append("backbone.attention_chunk: none of Llama, Mistral, Qwen2/3 or their MoE variants attends in chunks; "
                   "set attention_chunk: null")
    if bb.attention_sinks:
        out.append("backbone.attention_sinks: none of Llama, Mistral, Qwen2/3 or their MoE variants has sink logits; "
                   "set attention_sinks: false")
    if bb.mla is not None:
        out.append("backbone.mla: multi-head latent attention (DeepSeek-V2/V3) is in none of the families vlac exports")
    if exp.fusion.stream == "dual":
        out.append("fusion.stream: 'dual' keeps a second set of weights per block, which no Hugging Face decoder has")
    family, windowed = family_of(exp), bb.window_layers()
    if windowed and family not in PER_LAYER_WINDOWS and len(windowed) != bb.layers:
        out.append(f"backbone.sliding_window_layers: {family} windows every layer or none; set sliding_window_layers: "
                   f"\"all\" (or qk_norm / qkv_bias, whose Qwen families window layers one by one)")
    if moe is not None:
        if moe.shared_experts:
            out.append("moe.shared_experts: Mixtral and Qwen3-MoE have none; set shared_experts: 0")
        if moe.router != "softmax":
            out.append("moe.router: Mixtral and Qwen3-MoE route with a softmax; set router: softmax")
        if not bb.qk_norm and len(moe.moe_layer_indices(bb.layers)) != bb.layers:
            out.append('moe.layers: Mixtral makes every layer MoE; set layers: "all" (or qk_norm for Qwen3-MoE)')
        if bb.qkv_bias:
            out.append("backbone.qkv_bias: Mixtral and Qwen3-MoE have no q/k/v biases")
    elif bb.qk_norm and bb.qkv_bias:
        out.append("backbone.qkv_bias: Qwen3 has no q/k/v biases (Qwen2 has no QK-norm); choose one")
    return out


def family_of(exp: Experiment) -> str:
    bb = exp.backbone
    if exp.moe is not None:
        return "qwen3_moe" if bb.qk_norm else "mixtral"
    return "qwen3" if bb.qk_norm else "qwen2" if bb.qkv_bias else "mistral" if bb.window_layers() else "llama"


def hf_config(exp: Experiment, dtype: str) -> dict[str, Any]:
    problems = inexpressible(exp)
    if problems:
        raise ValueError("cannot export as a Hugging Face checkpoint:\n" + "\n".join(problems))
    bb, family = exp.backbone, family_of(exp)
    cfg: dict[str, Any] = {
        "architectures": [ARCHITECTURES[family]], "model_type": family, "dtype": dtype,
        "vocab_size": exp.vocab_layout().padded, "hidden_size": bb.hidden, "intermediate_size": bb.d_ffn,
        "num_hidden_layers": bb.layers, "num_attention_heads": bb.heads, "num_key_value_heads": bb.n_kv_heads,
        "head_dim": bb.d_head, "hidden_act": "silu", "rms_norm_eps": bb.norm_eps,
        "max_position_embeddings": bb.context_length, "tie_word_embeddings": bb.tied_embeddings,
        "rope_theta": bb.rope_theta,  # transformers 4.x
        "rope_parameters": {"rope_type": "default", "rope_theta": bb.rope_theta},  # transformers 5
        "attention_dropout": 0.0, "use_cache": True,
    }
    if family in ("llama", "qwen3", "qwen3_moe"):
        cfg["attention_bias"] = False
    if family == "llama":
        cfg["mlp_bias"] = False
    moe = exp.moe
    if family == "mixtral":
        cfg.update(num_local_experts=moe.experts, num_experts_per_tok=moe.top_k,
                   intermediate_size=moe.expert_hidden or bb.d_ffn, router_aux_loss_coef=moe.aux_loss_coef)
    if family == "qwen3_moe":
        moe_layers = set(moe.moe_layer_indices(bb.layers))
        cfg.update(num_experts=moe.experts, num_local_experts=moe.experts, num_experts_per_tok=moe.top_k,
                   moe_intermediate_size=moe.expert_hidden or bb.d_ffn, norm_topk_prob=True, decoder_sparse_step=1,
                   mlp_only_layers=[i for i in range(bb.layers) if i not in moe_layers],
                   router_aux_loss_coef=moe.aux_loss_coef)
    cfg.update(_window_config(exp, family))
    # which rows are the text tokens, and where vlac's own rows went: a re-import restores them all
    cfg["vlac_text_vocab_size"] = text_range(exp)[1]
    cfg["vlac_vocab_layout"] = [list(entry) for entry in exported_layout(exp)]
    if bb.init is not None:
        source = read_config(bb.init.hf)
        cfg.update({k: source[k] for k in CARRIED if k in source})
    return cfg


def _window_config(exp: Experiment, family: str) -> dict[str, Any]:
    """The sliding-window keys of `family`'s config (spec/pretrained.window_layers reads them back)."""
    bb = exp.backbone
    windowed = bb.window_layers()
    if family in PER_LAYER_WINDOWS:
        return {"use_sliding_window": bool(windowed), "sliding_window": bb.sliding_window if windowed else None,
                "max_window_layers": windowed[0] if windowed else bb.layers,
                "layer_types": ["sliding_attention" if i in windowed else "full_attention" for i in range(bb.layers)]}
    if family == "llama":
        return {}
    out: dict[str, Any] = {"sliding_window": bb.sliding_window if windowed else None}
    if family == "qwen3_moe":
        out["use_sliding_window"] = bool(windowed)
    return out
