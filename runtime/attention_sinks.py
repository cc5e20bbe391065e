"""Attention sinks (gpt-oss; Xiao et al. 2023, "Efficient Streaming Language Models with Attention
Sinks"): each head of a layer has a learned logit s_h that joins its softmax's denominator and adds
no value, so a query may put weight on "nothing":

    p_ij = exp(z_ij) / (exp(s_h) + sum_j' exp(z_ij'))      y_i = sum_j p_ij v_j

(gpt-oss's reference concatenates s_h as one more column of the scaled scores, takes the softmax
and drops that column). The same, exactly, through scaled_dot_product_attention, with no tensor of
per-head scores: one more key whose score is s_h and whose value is zero. The queries get one more
dimension holding s_h / scale (`sink_query`), the keys a zero there and the sink's key is the unit
vector of that dimension (`with_sink_slot`), so each real score is unchanged and the sink's is
scale * s_h / scale = s_h for every head, also when grouped-query heads share one key; the mask gets
the sink's column, allowed for every query (`sink_mask`, boolean like the layer's own). The sinks'
gradient flows through the queries, so the kernel's mask needs none.

The lowering reads the `sink_mask` node (one node: torch.fx.wrap in vlac.runtime.layers) to count
the pairs a sink-aware kernel computes: the layer's own pairs plus one per query, at the model's
head width (vlac.compiler.attention_pairs). Under tensor parallelism the logits are split with the
heads (runtime/parallel/tensor_parallel.py: `attn.sinks` gets Shard(0), this rank's heads' slice).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# gpt-oss's initialisation (transformers' GptOssPreTrainedModel._init_weights: normal_(sinks, 0,
# initializer_range), initializer_range 0.02), drawn from the generator build_model seeds
SINK_STD = 0.02


class SinkLogits(nn.Module):
    """The sink logit of each head, `weight` [heads]; forward returns it (this rank's heads under
    tensor parallelism). A vector: built with its value (runtime/materialize.py), never decayed."""

    def __init__(self, heads: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(heads).normal_(0.0, SINK_STD))

    def forward(self) -> torch.Tensor:
        return self.weight


def sink_query(q: torch.Tensor, sinks: torch.Tensor, scale: float) -> torch.Tensor:
    """q [B, H, Sq, D] with one more dimension holding each head's sink logit `sinks` [H] over the
    softmax scale the attention is then called with (its score against the sink's key is then the
    logit itself)."""
    column = (sinks / scale).to(q.dtype).view(1, -1, 1, 1).expand(q.size(0), -1, q.size(2), 1)
    return torch.cat([q, column], dim=-1)


def with_sink_slot(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k [B, Hkv, Sk, D] with a zero in the queries' sink dimension and, last, the sink's key (the
    unit vector of that dimension); v [B, Hkv, Sk, Dv] with the sink's value, zeros, last, and a
    zero dimension too: fused kernels (CPU FlashAttention among them) want one head width for q, k
    and v, and the output's extra dimension, zero, is dropped after the attention."""
    sink_key = F.pad(torch.zeros_like(k[..., :1, :]), (0, 1), value=1.0)
    return torch.cat([F.pad(k, (0, 1)), sink_key], dim=-2), F.pad(v, (0, 1, 0, 1))


def sink_mask(mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, causal: bool) -> torch.Tensor:
    """The boolean mask [B|1, 1, Sq, Sk + 1] of attention with the sink's key last, for q [.., Sq, D]
    and the layer's keys k [.., Sk, D]: `mask` where given, else causal with the queries the last Sq
    of the Sk keys when `causal`, else every key; the sink's column allowed for every query."""
    sq, sk = q.size(-2), k.size(-2)
    if mask is None:
        k_pos = torch.arange(sk, device=q.device)
        allowed = (k_pos[sk - sq:].unsqueeze(1) >= k_pos.unsqueeze(0)) if causal else torch.ones(
            sq, sk, dtype=torch.bool, device=q.device)
        mask = allowed.view(1, 1, sq, sk)
    return torch.cat([mask, torch.ones_like(mask[..., :1])], dim=-1)


__all__ = ["SINK_STD", "SinkLogits", "sink_mask", "sink_query", "with_sink_slot"]
