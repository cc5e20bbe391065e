"""Attention masks as tensor ops (traceable): causal, bidirectional inside image spans, prefix-LM.

None means plain causal, which lets scaled_dot_product_attention use its fused causal path.
Returned masks are boolean [B, 1, S, S], True where attention is allowed.
"""

from __future__ import annotations

import torch

MASK_KINDS = ("causal", "bidirectional_image", "prefix_lm")


def attention_mask(kind: str, span: torch.Tensor | None, prefix: torch.Tensor | None) -> torch.Tensor | None:
    if kind == "causal":
        return None
    if kind == "bidirectional_image":
        if span is None:
            raise ValueError("bidirectional_image masks need batch['span'] (image-span ids, 0 outside spans)")
        causal = _causal(span)
        same = (span.unsqueeze(2) == span.unsqueeze(1)) & (span.unsqueeze(2) > 0)
        return (causal | same).unsqueeze(1)
    if kind == "prefix_lm":
        if prefix is None:
            raise ValueError("prefix_lm masks need batch['prefix'] (1 on prompt positions)")
        causal = _causal(prefix)
        both = prefix.bool().unsqueeze(2) & prefix.bool().unsqueeze(1)
        return (causal | both).unsqueeze(1)
    raise ValueError(f"unknown attention mask {kind!r}; choose from {MASK_KINDS}")


def _causal(like: torch.Tensor) -> torch.Tensor:
    """[S, S] lower-triangular mask built from positions, so tracing needs no Python ints."""
    pos = torch.ones_like(like[0]).cumsum(0)
    return pos.unsqueeze(0) <= pos.unsqueeze(1)
