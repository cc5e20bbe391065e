"""The (query, key) pairs an attention kernel computes for a chunked layer, and how a lowered graph
says a layer is chunked or has attention sinks (vlac.compiler.node_costs.attention_flops counts
the pairs; the sliding window's own counting sits beside it there).

Chunked attention (Llama 4's attention_chunk_size; vlac.runtime.masks.chunk_mask): a query sees
the keys of its own chunk of C positions. A chunk-aware kernel (FlashAttention's block-sparse
masks, FlexAttention) skips every key block outside the query's chunk, so the pairs computed are
those inside the chunks (the causal half of each chunk for a causal layer), not Sq x Sk.

Attention sinks (vlac.runtime.attention_sinks): one more key per query, whose logit is the head's
sink; a sink-aware kernel (gpt-oss's FlashAttention kernels take the sink vector) adds it to each
query's softmax denominator, which the count charges as one more pair per query on top of the
layer's own pairs, at the model's head width (the runtime's extra query/key dimension, which
carries the logit through SDPA, is an artifact of that route and not charged).
"""

from __future__ import annotations

import torch.fx as fx

from vlac.runtime.attention_sinks import sink_mask
from vlac.runtime.masks import chunk_mask


def _call_of(mask, target) -> fx.Node | None:
    ok = isinstance(mask, fx.Node) and mask.op == "call_function" and mask.target is target
    return mask if ok else None


def sink_of(mask) -> fx.Node | None:
    """The `sink_mask` node an attention's mask argument comes from (behind the tracer's
    attention bias), else None. Its arguments: (the layer's own mask, q, k, causal)."""
    return _call_of(mask, sink_mask)


def chunk_of(mask) -> tuple[int, bool] | None:
    """(chunk, causal) of a mask argument made by runtime.masks.chunk_mask, causal when the
    layer's own mask was None; None for any other mask."""
    node = _call_of(mask, chunk_mask)
    return None if node is None else (int(node.args[3]), node.args[0] is None)


def chunk_pairs(sq: int, sk: int, chunk: int, causal: bool) -> int:
    """(query, key) pairs inside the chunks when the Sq queries are the last of the Sk key
    positions: a causal query at position p sees p % chunk + 1 keys (for Sq = Sk = n*chunk the sum
    is n*chunk*(chunk+1)/2); under an explicit mask it sees its whole chunk (the last one may be
    shorter), the mask's own zeros inside it computed."""
    full = sk - sk % chunk  # positions in whole chunks; the rest form a last, shorter chunk

    def upto(n: int) -> int:  # pairs of the queries at positions below n
        if causal:  # sum of p % chunk + 1
            return n // chunk * chunk * (chunk + 1) // 2 + (n % chunk) * (n % chunk + 1) // 2
        return min(n, full) * chunk + max(0, n - full) * (sk - full)

    return upto(sk) - upto(sk - sq)

__all__ = ["chunk_of", "chunk_pairs", "sink_of"]
