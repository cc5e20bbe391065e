"""The plain-GPT-layer formulas of ../shared/DESIGN.md (Narayanan et al. 2021, Korthikanti et al.
2022) and the same figures read off a lowered graph, for a GPT-3-style spec: learned positions,
a 4h GELU MLP, LayerNorm, multi-head attention, biases, tied embeddings.

Symbols: h hidden, a heads, s sequence, b micro-batch, t tensor-parallel size, V (padded)
vocabulary, l layers. Activation bytes are for 16-bit activations.

How the graph relates to the activation formula s·b·h·(34 + 5·a·s/h) per layer:
- 5·a·s²·b is the unfused attention core: softmax output (2as²b), its dropout mask (as²b) and
  the dropout output (2as²b). FlashAttention never materialises them; it keeps the fp32
  log-sum-exp per query row (4·a·s·b bytes) and recomputes the probabilities in its backward,
  which is why the graph counts the fused backward as 2.5x the forward instead of 2x. Removing
  the attention core from memory is exactly Megatron's "selective recompute", so with flash
  attention the graph's `none` is the formula's selective figure, 34·s·b·h (/t with SP).
- 34·s·b·h includes two dropout masks (s·b·h each: after the attention projection and after
  the MLP). With dropout 0 the runtime draws none: 32·s·b·h. The rest matches term by term
  (norm inputs 4, QKV input 2, Q and K 4, V 2, projection input 2 = the attention output, MLP
  input 2, GELU input 8, second GEMM input 8).
- LayerNorm keeps its fp32 mean and reciprocal std per token: 2 x 8·s·b bytes.
So per layer the graph holds 32·s·b·h + 4·a·s·b + 16·s·b bytes: `flash_layer_bytes`. Under TP
without SP the norm inputs and outputs (8·s·b·h) and the statistics stay whole on every rank.
"""

from __future__ import annotations

from typing import Any

from vlac.spec import Experiment
from vlac.spec import load as load_spec

from .graph import Graph, NodeCost

LN_STATS_BYTES = 8  # per token and LayerNorm: fp32 mean and reciprocal std
LSE_BYTES = 4  # per query row and head: fp32 log-sum-exp


def gpt_experiment(layers: int = 4, hidden: int = 256, heads: int = 8, seq_len: int = 128, vocab: int = 1024,
                   name: str = "gpt-formula", overrides: dict[str, Any] | None = None) -> Experiment:
    """A GPT-3-style text model of the given shape (V = `vocab` after padding to 128)."""
    spec: dict[str, Any] = {
        "name": name,
        "modalities": {"text": {"kind": "text", "tokenizer": "bpe", "vocab_size": vocab - 2, "tokens": seq_len - 2}},
        "vocab": {"pad_to_multiple": 128},
        "backbone": {"layers": layers, "hidden": hidden, "heads": heads, "mlp": "gelu", "norm": "layernorm",
                     "positions": "learned", "bias": True, "tied_embeddings": True, "context_length": seq_len,
                     "norm_eps": 1e-5},
        "data": {"mixture": [{"name": "web-text", "modalities": ["text"]}]},
        "train": {"seq_len": seq_len, "global_batch_tokens": seq_len * 8, "total_tokens": seq_len * 8 * 100},
        "precision": {"dtype": "bf16", "fp8": {"enabled": False}},
        "cluster": {"preset": "h100-sxm", "nodes": 1, "gpus_per_node": 8},
    }
    for key, value in (overrides or {}).items():
        spec[key] = value
    return load_spec(spec)


# ---- the formulas, as written in DESIGN.md ---------------------------------------------------

def parameters(l: int, h: int, V: int, s: int) -> int:
    """12·l·h²·(1 + 13/(12h) + (V+s)/(12lh)) = 12lh² + 13lh + (V+s)h, in exact integers: blocks,
    learned positions, tied embedding."""
    return 12 * l * h * h + 13 * l * h + (V + s) * h


def mtp_parameters(depth: int, h: int) -> int:
    """Multi-token prediction modules (runtime/mtp.py, DeepSeek-V3 Sec. 2.2) of this GPT layer:
    per module a block (12h² + 13h), the projection M_k of [emb; h] (2h·h, no bias, as DeepSeek's
    eh_proj) and three LayerNorms (2h each: the two input norms and the one before the shared
    head); the embedding and the output head are the model's."""
    return depth * (12 * h * h + 13 * h + 2 * h * h + 3 * 2 * h)


def gemm_flops_full_recompute(B: int, s: int, l: int, h: int, V: int) -> int:
    """96·B·s·l·h²·(1 + s/(6h) + V/(16lh)) = 96Bslh² + 16Bs²lh + 6BshV, in exact integers:
    forward, backward (2x) and one recomputed forward of every decoder GEMM, attention dense;
    the logit GEMM forward and backward."""
    return 96 * B * s * l * h * h + 16 * B * s * s * l * h + 6 * B * s * h * V


def activation_bytes(s: int, b: int, h: int, a: int, t: int = 1, sp: bool = False, recompute: str = "none") -> float:
    """Bytes one layer keeps for backward (16-bit, no flash attention), per tensor-parallel rank.
    `recompute`: none, selective (Megatron's: the attention core is recomputed), full."""
    if recompute == "full":
        return 2 * s * b * h / (t if sp else 1)
    attention_core = 0.0 if recompute == "selective" else 5 * a * s / h
    if sp or t == 1:
        return s * b * h / t * (34 + attention_core)
    return s * b * h * (10 + 24 / t + attention_core / t)  # TP without SP: norms, inputs replicated


# ---- the same figures from the graph ---------------------------------------------------------

def flash_layer_bytes(s: int, b: int, h: int, a: int, t: int = 1, sp: bool = False) -> float:
    """What one layer of the lowered graph keeps with FlashAttention and dropout 0 (module
    docstring), per tensor-parallel rank."""
    if sp or t == 1:
        return (32 * s * b * h + LSE_BYTES * a * s * b + 2 * LN_STATS_BYTES * s * b) / t
    replicated = 8 * s * b * h + 2 * LN_STATS_BYTES * s * b  # norm inputs and outputs, stats
    sharded = 24 * s * b * h + LSE_BYTES * a * s * b  # q, k, v, attention output, MLP inner
    return replicated + sharded / t


def graph_gemm_flops_full_recompute(g: Graph) -> float:
    """The graph's GEMM and attention FLOPs counted as the formula counts them: every decoder
    GEMM forward, backward and one recomputed forward (Megatron recomputes the whole layer;
    torch.utils.checkpoint's early stop would skip the last GEMM, `NodeCost.recomputed`), the
    attention dense with a 2x backward, capacity over-compute included."""
    total = 0.0
    for n in g.nodes:
        if n.kind not in ("gemm", "router", "attention"):
            continue
        fwd, bwd = _math_convention(n)
        total += fwd + bwd + (fwd if n.in_block else 0.0)
    return total


def _math_convention(n: NodeCost) -> tuple[float, float]:
    if n.kind == "attention":
        fwd = n.flops_fwd / n.score_fraction  # dense: causal halves, sliding windows and chunks undone
        return fwd, (2.0 * fwd if n.flops_bwd else 0.0)
    total = n.flops_fwd + n.flops_bwd
    share = n.flops_fwd / total if total else 0.0
    return n.flops_fwd + n.flops_overcompute * share, n.flops_bwd + n.flops_overcompute * (1 - share)


def layer_bytes(g: Graph, layer: int = 1, policy: str = "none", tp: int = 1, sp: bool = False) -> float:
    """Bytes one decoder layer of the graph keeps, per tensor-parallel rank."""
    return sum(n.saved_per_rank(policy, tp, sp) for n in g.nodes if n.layer == layer)


__all__ = ["activation_bytes", "flash_layer_bytes", "gemm_flops_full_recompute", "gpt_experiment",
           "graph_gemm_flops_full_recompute", "layer_bytes", "parameters"]
