"""Attention masks as tensor ops (traceable): causal, bidirectional inside image spans, prefix-LM,
the segment-recurrence window of `vlac.runtime.memory`, and the sliding window or the attention
chunk of a layer.

None means plain causal, which lets scaled_dot_product_attention use its fused causal path.
Returned masks are boolean [B, 1, S, S], True where attention is allowed. Sizes come from
tensors (`ones_like(...).cumsum`), never from Python ints, so symbolic tracing records them.
"""

from __future__ import annotations

import torch

from .memory import segment_window

MASK_KINDS = ("causal", "bidirectional_image", "prefix_lm")


def attention_mask(kind: str, span: torch.Tensor | None, prefix: torch.Tensor | None,
                   segment_length: int = 0, memory_tokens: int = 0,
                   document: torch.Tensor | None = None) -> torch.Tensor | None:
    """The mask of `fusion.attention_mask` kind, intersected with the segment-memory window when
    `segment_length` > 0 (see vlac.runtime.memory) and, for packed sequences, with `document`
    [B, S] (ids of the documents packed into a row): no position attends across documents, and
    segments count from each document's start (as its rotary positions do)."""
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown attention mask {kind!r}; choose from {MASK_KINDS}")
    base = None
    if kind == "bidirectional_image":
        if span is None:
            raise ValueError("bidirectional_image masks need batch['span'] (image-span ids, 0 outside spans)")
        same = (span.unsqueeze(2) == span.unsqueeze(1)) & (span.unsqueeze(2) > 0)
        base = (causal(span) | same).unsqueeze(1)
    elif kind == "prefix_lm":
        if prefix is None:
            raise ValueError("prefix_lm masks need batch['prefix'] (1 on prompt positions)")
        both = prefix.bool().unsqueeze(2) & prefix.bool().unsqueeze(1)
        base = (causal(prefix) | both).unsqueeze(1)
    if document is not None:
        same_doc = (document.unsqueeze(2) == document.unsqueeze(1)).unsqueeze(1)
        base = (base if base is not None else causal(document).unsqueeze(0).unsqueeze(0)) & same_doc
    if segment_length <= 0:
        return base
    like = span if span is not None else prefix
    if like is None:
        raise ValueError("segment memory masks need batch['span'] or batch['prefix'] for the sequence length")
    if document is None:
        pos = positions(like[0])
        window = segment_window(pos, pos, segment_length, memory_tokens)  # [S, S]
    else:
        pos = document_positions(document)
        window = segment_window(pos, pos, segment_length, memory_tokens).unsqueeze(1)  # [B, 1, S, S]
    if base is None:
        base = causal(like).unsqueeze(0).unsqueeze(0)
    return base & window


def positions(like_row: torch.Tensor, start: int = 0) -> torch.Tensor:
    """0 .. S-1 (+ start) as a tensor op on a [S] tensor."""
    return torch.ones_like(like_row, dtype=torch.long).cumsum(0) - 1 + start


def document_positions(document: torch.Tensor) -> torch.Tensor:
    """[B, S] positions that restart at 0 where each packed document begins (a new id starts a
    document; padding, id 0, counts as one more). The model rotates and embeds packed tokens at
    these, so each document sees the positions it has alone: learned position embeddings differ
    outright, and RoPE, relative in exact arithmetic, rounds differently far along a row."""
    pos = torch.ones_like(document).cumsum(1) - 1
    starts = torch.cat([torch.ones_like(document[:, :1], dtype=torch.bool), document[:, 1:] != document[:, :-1]], 1)
    return pos - torch.where(starts, pos, torch.zeros_like(pos)).cummax(1).values


def causal(like: torch.Tensor) -> torch.Tensor:
    """[S, S] lower-triangular mask built from positions, so tracing needs no Python ints."""
    pos = positions(like[0])
    return pos.unsqueeze(0) <= pos.unsqueeze(1)


def query_key_positions(q: torch.Tensor, k: torch.Tensor,
                        token_positions: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence positions [Sq] and [Sk] of the queries and keys of q [.., Sq, D] and k [.., Sk, D]:
    `token_positions` when given, else the queries are the last Sq of the Sk key positions."""
    if token_positions is not None:
        return token_positions
    sq, sk = q.size(-2), k.size(-2)
    k_pos = torch.arange(sk, device=q.device)
    return k_pos[sk - sq:], k_pos


def sliding_window_mask(mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, window: int,
                        token_positions: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """`mask` (None = causal, or boolean [B, 1, Sq, Sk]) restricted to keys fewer than `window`
    positions from their query, for q [B, H, Sq, D] and k [B, H, Sk, D]: the queries are the last
    Sq of the Sk key positions (training, and decoding past a KV cache), unless `token_positions`
    gives the sequence positions of the queries [Sq] and of the keys [Sk] (context parallelism:
    this rank's chunks and the gathered keys in rank order). The window bounds the
    distance either way; the mask keeps deciding the direction, so a causal layer sees its last
    `window` tokens (itself included, Mistral's `sliding_window`) and a bidirectional image span
    its tokens within the window on both sides. Packed documents and segment memory compose by
    intersection like every other mask. Called on real (or meta) tensors, never traced through:
    vlac.runtime.layers registers it with torch.fx.wrap, so the lowering sees one node whose
    arguments say the window and whether the layer's mask was causal (vlac.compiler.node_costs)."""
    sq, sk = q.size(-2), k.size(-2)
    q_pos, k_pos = query_key_positions(q, k, token_positions)
    distance = q_pos.unsqueeze(1) - k_pos.unsqueeze(0)  # [Sq, Sk]
    if mask is None:
        return ((distance >= 0) & (distance < window)).view(1, 1, sq, sk)
    return mask & (distance.abs() < window)


def chunk_mask(mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, chunk: int,
               token_positions: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """`mask` (None = causal, or boolean [B, 1, Sq, Sk]) restricted to keys in the query's own chunk
    of `chunk` positions (p // chunk equal: Llama 4's attention_chunk_size), with positions read
    as `sliding_window_mask` reads them (the last Sq of Sk, or `token_positions` under context
    parallelism, so the chunks are cut on global positions). The mask keeps deciding the
    direction: a causal layer sees the earlier keys of its chunk, itself included. Registered
    with torch.fx.wrap like the window (vlac.runtime.layers): the lowering reads the chunk from
    the node's arguments (vlac.compiler.attention_pairs)."""
    sq, sk = q.size(-2), k.size(-2)
    q_pos, k_pos = query_key_positions(q, k, token_positions)
    same = (q_pos.unsqueeze(1) // chunk) == (k_pos.unsqueeze(0) // chunk)  # [Sq, Sk]
    if mask is None:
        return (same & (q_pos.unsqueeze(1) >= k_pos.unsqueeze(0))).view(1, 1, sq, sk)
    return mask & same
