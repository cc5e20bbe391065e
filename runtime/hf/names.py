"""Which Hugging Face tensor each vlac backbone parameter is, per family.

vlac's decoder and the Llama-style Hugging Face decoders compute the same function with the same
tensor layouts: nn.Linear weights [out, in] on both sides, rotate-half RoPE over split halves on
both sides (vlac.runtime.kernels.rope; so q/k rows need no permutation), RMSNorm gains, GQA with
the key/value heads in consecutive rows. Only names differ, plus two layouts:

- the vocabulary: vlac's unified vocabulary puts the special tokens first and the text range at an
  offset (spec VocabLayout), so embedding and head rows move (vlac.runtime.hf.vocab);
- experts: Hugging Face stores one Linear per expert ([f, d] and [d, f]); vlac stacks them as
  [E, d, f] (w1, w3) and [E, f, d] (w2), i.e. transposed and stacked along a new first dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlac.spec import Experiment

# vlac name inside a block -> Hugging Face name inside `model.layers.{i}.`
ATTENTION = {"attn_norm.weight": "input_layernorm.weight", "mlp_norm.weight": "post_attention_layernorm.weight",
             "attn.wq.weight": "self_attn.q_proj.weight", "attn.wk.weight": "self_attn.k_proj.weight",
             "attn.wv.weight": "self_attn.v_proj.weight", "attn.wo.weight": "self_attn.o_proj.weight"}
QKV_BIAS = {"attn.wq.bias": "self_attn.q_proj.bias", "attn.wk.bias": "self_attn.k_proj.bias",
            "attn.wv.bias": "self_attn.v_proj.bias"}
QK_NORM = {"attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight"}
DENSE_MLP = {"mlp.w1.weight": "mlp.gate_proj.weight", "mlp.w3.weight": "mlp.up_proj.weight",
             "mlp.w2.weight": "mlp.down_proj.weight"}
# per family: (router name, expert module prefix, names of w1 / w3 / w2 inside one expert)
MOE = {"mixtral": ("block_sparse_moe.gate.weight", "block_sparse_moe.experts", ("w1", "w3", "w2")),
       "qwen3_moe": ("mlp.gate.weight", "mlp.experts", ("gate_proj", "up_proj", "down_proj"))}
EMBED, HEAD, NORM = "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"


@dataclass(frozen=True)
class Direct:
    """The Hugging Face tensor as it is."""
    name: str


@dataclass(frozen=True)
class Vocab:
    """Embedding or head rows: the text range of vlac's vocabulary is the checkpoint's rows."""
    name: str


@dataclass(frozen=True)
class Experts:
    """Stacked experts: vlac [E, a, b] = stack over e of the transposed Hugging Face [b, a]."""
    names: tuple[str, ...]  # one per expert


Source = Direct | Vocab | Experts


def sources(exp: Experiment, family: str) -> dict[str, Source]:
    """vlac parameter name (as in the unwrapped model and in checkpoints) -> its Hugging Face source."""
    bb = exp.backbone
    out: dict[str, Source] = {"embed.weight": Vocab(EMBED), "norm.weight": Direct(NORM),
                              "head.weight": Vocab(EMBED if bb.tied_embeddings else HEAD)}
    moe_layers = set(exp.moe.moe_layer_indices(bb.layers)) if exp.moe else set()
    for i in range(bb.layers):
        hf = f"model.layers.{i}."
        names = dict(ATTENTION)
        if bb.qkv_bias:
            names.update(QKV_BIAS)
        if bb.qk_norm:
            names.update(QK_NORM)
        if i not in moe_layers:
            names.update(DENSE_MLP)
        out.update({f"layers.{i}.{v}": Direct(hf + h) for v, h in names.items()})
        if i in moe_layers:
            router, experts, (g, u, d) = MOE[family]
            out[f"layers.{i}.mlp.router.weight"] = Direct(hf + router)
            for vlac_name, proj in (("w1", g), ("w3", u), ("w2", d)):
                out[f"layers.{i}.mlp.experts.{vlac_name}"] = Experts(tuple(
                    f"{hf}{experts}.{e}.{proj}.weight" for e in range(exp.moe.experts)))
    return out
