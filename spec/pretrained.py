"""Starting from a Hugging Face checkpoint: `backbone.init: {hf: PATH}` checks the spec against the
checkpoint's config.json; `backbone: {from_hf: PATH}` fills the backbone (and the MoE layout and
the text vocabulary size) from it.

Only the config is read here (no torch): the weights are read by vlac.runtime.hf. A field the
family fixes (e.g. SwiGLU, RMSNorm, RoPE) or that the checkpoint's config gives (widths, heads,
experts) must agree with the spec; each disagreement is one error naming the field, both values
and the fix. Families vlac's decoder can express exactly (so logits match the reference):

  llama       Llama 2/3 without rope scaling, no biases
  qwen2       Qwen2 / Qwen2.5 (biases on the q, k, v projections: `qkv_bias`)
  qwen3       Qwen3 (RMSNorm on queries and keys: `qk_norm`)
  mistral     Mistral (Llama's layout; `sliding_window` on every layer)
  mixtral     Mixtral (every layer MoE, softmax router, top-k weights renormalised)
  qwen3_moe   Qwen3-MoE (QK-norm; MoE layers from decoder_sparse_step / mlp_only_layers;
              needs norm_topk_prob: true, which is how vlac's router mixes its top-k experts)

Sliding-window attention maps to `sliding_window` and `sliding_window_layers`: Mistral's and
Mixtral's `sliding_window` on every layer; Qwen2's and Qwen3's `use_sliding_window` on the layers
from `max_window_layers` on, Qwen3-MoE's on every layer; a config that lists `layer_types`
(transformers 5 writes them for Qwen2/Qwen3) on the layers it marks "sliding_attention".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field

from .base import SpecModel
from .hf_config_file import (CONFIG_FILE, CheckpointKind, ConfigValue, PretrainedError, check_values, read_hf_config,
                             require_keys)

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe")
MOE_FAMILIES = ("mixtral", "qwen3_moe")
TOKENIZER_FILE = "tokenizer.json"
REQUIRED = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")


class PretrainedInit(SpecModel):
    """Where the backbone's starting weights come from."""

    hf: str = Field(description="folder of a local Hugging Face checkpoint (config.json + *.safetensors); "
                                "families: " + ", ".join(FAMILIES))
    new_row_noise: float = Field(0.01, ge=0, le=100, description="vocabulary rows the checkpoint lacks (specials, other "
                                 "modalities, padding) start at the mean text embedding plus this many per-dimension "
                                 "standard deviations of Gaussian noise (docs/pretrained.md)")


DECODER_CHECKPOINT = CheckpointKind(FAMILIES, " (config.json + *.safetensors)", "a family vlac's decoder reproduces",
                                    f"a checkpoint of {', '.join(FAMILIES)}")


_SIZE = ConfigValue("int", 1, 2**31 - 1)
_LAYERS = ConfigValue("int", 1, 2**16)  # far above backbone.layers' bound, which then says so; ranges stay small
# the config keys this module reads, and what each must hold (the spec's own bounds come after)
DECODER_VALUES = {
    "num_hidden_layers": _LAYERS, "hidden_size": _SIZE, "num_attention_heads": _SIZE, "intermediate_size": _SIZE,
    "vocab_size": _SIZE, "vlac_text_vocab_size": _SIZE, "num_key_value_heads": ConfigValue("int", null=True),
    "head_dim": ConfigValue("int", null=True), "rms_norm_eps": ConfigValue("number", 0, 1),
    "rope_theta": ConfigValue("number", 0, 1e300), "rope_parameters": ConfigValue("mapping", null=True),
    "rope_scaling": ConfigValue("mapping", null=True), "hidden_act": ConfigValue("str"),
    "attention_bias": ConfigValue("bool", null=True), "mlp_bias": ConfigValue("bool", null=True),
    "tie_word_embeddings": ConfigValue("bool", null=True), "norm_topk_prob": ConfigValue("bool", null=True),
    "num_experts_per_tok": _SIZE, "num_experts": _SIZE, "num_local_experts": _SIZE, "moe_intermediate_size": _SIZE,
    "decoder_sparse_step": ConfigValue("int", 0, 2**16, null=True), "mlp_only_layers": ConfigValue("ints", 0, 2**16, null=True),
    "layer_types": ConfigValue("strs", null=True), "use_sliding_window": ConfigValue("bool", null=True),
    "max_window_layers": ConfigValue("int", 0, 2**16), "sliding_window": ConfigValue("int", null=True),
    "max_position_embeddings": ConfigValue("int", null=True),
}
ROPE_VALUES = {"rope_theta": ConfigValue("number", 0, 1e300), "rope_type": ConfigValue("str", null=True)}


def read_config(path: str | Path, field: str = "backbone.init.hf") -> dict[str, Any]:
    """The checkpoint's config.json, its family checked and each value vlac reads of the right
    type (a wrong one is a PretrainedError naming the key, not a TypeError later)."""
    cfg, cfg_file = read_hf_config(Path(path), field, DECODER_CHECKPOINT)
    family = cfg["model_type"]
    required = REQUIRED + (("num_local_experts",) if family == "mixtral" else ()) + \
        (("moe_intermediate_size", "num_experts_per_tok", ("num_experts", "num_local_experts"))
         if family == "qwen3_moe" else ())
    require_keys(cfg, required, field, cfg_file, f", which a {family} config has")
    check_values(cfg, DECODER_VALUES, field, cfg_file)
    for key in ("rope_parameters", "rope_scaling"):
        if cfg.get(key) is not None:
            check_values(cfg[key], ROPE_VALUES, field, cfg_file, f"{key}.")
    return cfg


def rope_theta(cfg: dict[str, Any]) -> float:
    """RoPE base of a config (transformers 5 nests it in rope_parameters; 4.x kept it at the top)."""
    params = cfg.get("rope_parameters") or {}
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def unsupported(cfg: dict[str, Any]) -> list[str]:
    """What a checkpoint uses that vlac's decoder does not compute (each one a reason to refuse)."""
    out = []
    scaling = (cfg.get("rope_parameters") or {}).get("rope_type") or (cfg.get("rope_scaling") or {}).get("rope_type")
    if scaling not in (None, "default"):
        out.append(f"rope scaling {scaling!r} (vlac's RoPE is unscaled)")
    if cfg.get("hidden_act", "silu") != "silu":
        out.append(f"hidden_act {cfg['hidden_act']!r} (vlac's SwiGLU uses silu)")
    if cfg["model_type"] == "llama" and (cfg.get("attention_bias") or cfg.get("mlp_bias")):
        out.append("attention_bias / mlp_bias")
    if cfg["model_type"] in ("qwen3", "qwen3_moe") and cfg.get("attention_bias"):
        out.append("attention_bias")
    if cfg["model_type"] == "qwen3_moe" and cfg.get("num_experts_per_tok", 1) > 1 and not cfg.get("norm_topk_prob"):
        out.append("norm_topk_prob: false (vlac renormalises the top-k router weights)")
    return out


def backbone_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    """The backbone section a checkpoint's config stands for (context_length excluded: the spec
    may train on shorter sequences than the checkpoint supports)."""
    family = cfg["model_type"]
    heads = cfg["num_attention_heads"]
    return {
        "layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"], "heads": heads,
        "kv_heads": cfg.get("num_key_value_heads") or heads,
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // heads,
        "ffn_hidden": cfg["intermediate_size"], "mlp": "swiglu", "norm": "rmsnorm",
        "norm_eps": float(cfg.get("rms_norm_eps", 1e-6)), "positions": "rope", "rope_theta": rope_theta(cfg),
        "qk_norm": family in ("qwen3", "qwen3_moe"),
        # PretrainedConfig's default is tied; Llama-family configs always write the key
        "tied_embeddings": bool(cfg.get("tie_word_embeddings", True)),
        "bias": False, "qkv_bias": family == "qwen2",
        "attention_chunk": None, "attention_sinks": False,  # none of the families above has either
        **window_fields(cfg),
    }


def window_layers(cfg: dict[str, Any]) -> list[int]:
    """Indices of the layers a checkpoint's config runs with sliding-window attention."""
    layers = cfg["num_hidden_layers"]
    if cfg.get("layer_types"):
        return [i for i, kind in enumerate(cfg["layer_types"]) if kind == "sliding_attention"]
    family, used = cfg["model_type"], cfg.get("use_sliding_window")
    if family in ("qwen2", "qwen3"):  # before transformers 5 wrote layer_types
        return list(range(cfg.get("max_window_layers", 28), layers)) if used else []
    if family == "qwen3_moe" and not used:  # Qwen3-MoE windows every layer, or none
        return []
    return list(range(layers)) if cfg.get("sliding_window") else []  # Mistral, Mixtral: every layer


def window_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    """backbone.sliding_window and sliding_window_layers of a checkpoint (the shortest pattern
    that names its windowed layers)."""
    idx, layers = window_layers(cfg), cfg["num_hidden_layers"]
    if not idx or not cfg.get("sliding_window"):
        return {"sliding_window": None, "sliding_window_layers": "all"}
    pattern: str | list[int] = idx
    if idx == list(range(layers)):
        pattern = "all"
    elif idx == list(range(idx[0], layers)):
        pattern = f"from:{idx[0]}"
    return {"sliding_window": int(cfg["sliding_window"]), "sliding_window_layers": pattern}


def moe_fields(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The moe section's structural fields a checkpoint fixes, or None for a dense family."""
    family, layers = cfg["model_type"], cfg["num_hidden_layers"]
    if family == "mixtral":
        return {"layers": "all", "experts": cfg["num_local_experts"], "top_k": cfg["num_experts_per_tok"],
                "shared_experts": 0, "expert_hidden": cfg["intermediate_size"], "router": "softmax"}
    if family == "qwen3_moe":
        step, dense = cfg.get("decoder_sparse_step", 1) or 1, set(cfg.get("mlp_only_layers") or [])
        moe = [i for i in range(layers) if i not in dense and (i + 1) % step == 0]
        # transformers 5 writes num_local_experts; 4.x wrote num_experts
        experts = cfg.get("num_experts", cfg.get("num_local_experts"))
        return {"layers": "all" if len(moe) == layers else moe, "experts": experts,
                "top_k": cfg["num_experts_per_tok"], "shared_experts": 0,
                "expert_hidden": cfg["moe_intermediate_size"], "router": "softmax"}
    return None


def text_modality(modalities: dict[str, Any]) -> str | None:
    """The text modality whose vocabulary range the checkpoint's embedding rows fill."""
    for name, m in modalities.items():
        kind = m.get("kind") if isinstance(m, dict) else getattr(m, "kind", None)
        shares = m.get("shares_vocab_with") if isinstance(m, dict) else getattr(m, "shares_vocab_with", None)
        if kind == "text" and not shares:
            return name
    return None


def text_rows(cfg: dict[str, Any]) -> int:
    """Rows of the checkpoint's text vocabulary: all of them, or, for a checkpoint vlac exported,
    those before the rows vlac added (`vlac_text_vocab_size`)."""
    return int(cfg.get("vlac_text_vocab_size", cfg["vocab_size"]))


def anchor_from_hf(data: Any, base: str | Path) -> Any:
    """`data` with a relative `backbone.from_hf` made absolute against `base` (the spec file's
    folder), as data and tokenizer paths are; other input passes through."""
    bb = data.get("backbone") if isinstance(data, dict) else None
    if (not isinstance(bb, dict) or not isinstance(bb.get("from_hf"), str) or not bb["from_hf"].strip()
            or Path(bb["from_hf"]).expanduser().is_absolute()):  # an empty one is refused, not made the spec's folder
        return data
    return {**data, "backbone": {**bb, "from_hf": str(Path(base) / bb["from_hf"])}}


def expand_from_hf(data: Any) -> Any:
    """`backbone: {from_hf: PATH, ...}` -> the backbone (and moe, and the text vocab_size) filled from
    the checkpoint's config, with `init: {hf: PATH}`; fields the spec also sets are left for the
    check (so a conflict is an error, not silently overridden). The text modality takes the
    checkpoint's tokenizer.json (as its BPE `path`) when the folder has one and the spec names no
    other, so text keeps the ids the pretrained embedding rows were trained on. Other input passes
    through."""
    if not isinstance(data, dict) or not isinstance(data.get("backbone"), dict) or "from_hf" not in data["backbone"]:
        return data
    data = dict(data)
    bb = dict(data["backbone"])
    given = bb.pop("from_hf")
    if not isinstance(given, str) or not given.strip():  # str(None) would name a folder "None"
        raise PretrainedError(f"backbone.from_hf: {given!r:.40} is not a folder; give the path of a local checkpoint "
                              f"(config.json + *.safetensors), e.g. from_hf: checkpoints/qwen2-0.5b")
    path = str(Path(given).expanduser().resolve())
    cfg = read_config(path, "backbone.from_hf")
    filled = backbone_fields(cfg)
    filled.setdefault("context_length", cfg.get("max_position_embeddings", 4096))
    data["backbone"] = {**filled, **bb, "init": bb.get("init") or {"hf": path}}
    moe = moe_fields(cfg)
    if moe is not None:
        data["moe"] = {**moe, **(data.get("moe") or {})}
    mods = data.get("modalities")
    name = text_modality(mods) if isinstance(mods, dict) else None
    if name is not None and isinstance(mods[name], dict):
        text = dict(mods[name])
        text.setdefault("vocab_size", text_rows(cfg))
        if os.path.isfile(Path(path) / TOKENIZER_FILE) and text.get("tokenizer", "bpe") == "bpe":
            text.setdefault("path", path)
        data["modalities"] = {**mods, name: text}
    return data


def mismatches(exp: Any) -> list[str]:
    """Every way the validated experiment disagrees with its `backbone.init.hf` checkpoint."""
    init = exp.backbone.init
    if init is None:
        return []
    try:
        cfg = read_config(init.hf)
    except PretrainedError as e:
        return [str(e)]
    where = f"the checkpoint's config ({Path(init.hf) / CONFIG_FILE})"
    out = [f"backbone.init.hf: {init.hf} uses {what}, which vlac cannot reproduce; choose another checkpoint"
           for what in unsupported(cfg)]
    fix = "set it to the checkpoint's value, or leave it out and write backbone: {from_hf: PATH} to take it from there"
    bb = exp.backbone
    all_moe = exp.moe is not None and len(exp.moe.moe_layer_indices(bb.layers)) == bb.layers
    derived = {"kv_heads": bb.n_kv_heads, "head_dim": bb.d_head, "ffn_hidden": bb.d_ffn,  # defaults resolved
               "sliding_window_layers": list(bb.window_layers())}  # any pattern naming the same layers
    for field, want in backbone_fields(cfg).items():
        if field == "ffn_hidden" and all_moe:
            continue  # every layer MoE (Mixtral): the dense width is never used
        if field == "sliding_window_layers":
            want = window_layers(cfg) if cfg.get("sliding_window") else []
        have = derived.get(field, getattr(bb, field))
        if have != want:
            out.append(f"backbone.{field}: {have!r} differs from {want!r} in {where}; {fix}")
    limit = cfg.get("max_position_embeddings")
    if limit and exp.backbone.context_length > limit:
        out.append(f"backbone.context_length: {exp.backbone.context_length} exceeds the checkpoint's "
                   f"max_position_embeddings {limit}; use context_length <= {limit}")
    moe = moe_fields(cfg)
    if moe is None and exp.moe is not None:
        out.append(f"moe: {cfg['model_type']} is dense; remove the moe section or choose an MoE checkpoint")
    elif moe is not None and exp.moe is None:
        out.append(f"moe: {cfg['model_type']} is a mixture of experts; add a moe section ({fix})")
    elif moe is not None:
        layers = exp.backbone.layers
        for field, want in moe.items():
            have = getattr(exp.moe, field)
            if field == "layers":
                have, want = exp.moe.moe_layer_indices(layers), exp.moe.model_copy(update={"layers": want}).moe_layer_indices(layers)
            elif field == "expert_hidden":
                have = have or exp.backbone.d_ffn
            if have != want:
                out.append(f"moe.{field}: {have!r} differs from {want!r} in {where}; {fix}")
    name = text_modality(exp.modalities)
    if name is None:
        out.append("modalities: a pretrained language model needs a text modality; add e.g. text: {kind: text}")
    elif exp.modalities[name].vocab_size != text_rows(cfg):
        rows = text_rows(cfg)
        out.append(f"modalities.{name}.vocab_size: {exp.modalities[name].vocab_size} differs from the checkpoint's "
                   f"text vocabulary of {rows} rows; set vocab_size: {rows}")
    return out
