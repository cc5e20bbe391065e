"""Attention sinks (gpt-oss; Xiao et al. 2023, "Efficient Streaming Language Models with Attention
Sinks"): each head of a layer has a learned logit s_h that joins its softmax's denominator and adds
no value, so a query may put weight on "nothing":

    p_ij = exp(z_ij) / (exp(s_h) + sum_j' exp(z_ij'))      y_i = sum_j p_ij v_j

(gpt-oss's reference concatenates s_h as one more column of the scaled scores, takes the softmax
and drops that column). The same, exactly, through scaled_dot_product_attention: one more key and
value of zeros, whose score q.0 * scale is 0, plus a float mask whose column for that key holds
s_h (and 0 / -inf elsewhere, the layer's own mask). The lowering reads the `sink_bias` node (one
node: torch.fx.wrap in vlac.runtime.layers) to count the pairs a sink-aware kernel computes: the
layer's own pairs plus one per query (vlac.compiler.attention_pairs).

Under tensor parallelism the logits are split with the heads (runtime/parallel/tensor_parallel.py:
`attn.sinks` gets Shard(0) and hands this rank its heads' slice).
"""

from __future__ import annotations

import math

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


def sink_bias(mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, sinks: torch.Tensor,
              causal: bool) -> torch.Tensor:
    """The float mask [B|1, H, Sq, Sk + 1] of attention with sinks, for q [B, H, Sq, D] and the
    layer's keys k [B, Hkv, Sk, D]: 0 where `mask` allows (None: causal with the queries the last Sq
    of the Sk keys when `causal`, else every key), -inf elsewhere, and in the last column each
    head's sink logit `sinks` [H]. The keys and values get their zero column from `with_sink_slot`."""
    sq, sk = q.size(-2), k.size(-2)
    if mask is None:
        k_pos = torch.arange(sk, device=q.device)
        allowed = (k_pos[sk - sq:].unsqueeze(1) >= k_pos.unsqueeze(0)) if causal else torch.ones(
            sq, sk, dtype=torch.bool, device=q.device)
        mask = allowed.view(1, 1, sq, sk)
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(mask.logical_not(), -math.inf)
    heads = sinks.numel()
    bias = bias.expand(mask.size(0), heads, sq, sk)
    column = sinks.to(q.dtype).view(1, heads, 1, 1).expand(mask.size(0), heads, sq, 1)
    return torch.cat([bias, column], dim=-1)


def with_sink_slot(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k and v [B, H, S, D] with one more position of zeros at the end: the sink's key (score 0,
    its logit comes from `sink_bias`) and its value (it adds nothing to the output)."""
    return F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))


__all__ = ["SINK_STD", "SinkLogits", "sink_bias", "with_sink_slot"]
