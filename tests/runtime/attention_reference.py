"""The reference that the runtime's attention tests (sliding windows, chunks, sinks) compare one
layer against: softmax(q k^T / sqrt(d)) v written out over an explicit boolean mask, and the masks
of the three sequence layouts they run it on."""

import math

import torch

from vlac.runtime.layers import Attention
from vlac.runtime.masks import attention_mask


def reference_attention(attn: Attention, x: torch.Tensor, allowed: torch.Tensor,
                        sinks: torch.Tensor | None = None) -> torch.Tensor:
    """attn's output computed by hand: each query head reads its key/value group, softmax over the
    `allowed` [B, 1, S, S] scores (and, with `sinks` [H], one more column per head holding its sink
    logit, dropped after the softmax, as gpt-oss's reference does), times v, through wo."""
    q, k, v = (t.transpose(1, 2) for t in attn.project(x))
    group = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = ((q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))).masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        column = sinks.view(1, -1, 1, 1).expand(scores.size(0), -1, scores.size(2), 1)
        probs = torch.cat([scores, column], -1).softmax(-1)[..., :-1]
    else:
        probs = scores.softmax(-1)
    return attn.wo((probs @ v).transpose(1, 2).flatten(2))


def layout_masks(b: int, s: int) -> dict[str, torch.Tensor | None]:
    """The attention's `mask` argument for b = 2 rows of s = 10 tokens: causal (None), a prefix-LM
    row pair with a 4-token prefix, and packed rows (documents of 6 and 4 tokens, then one of 10)."""
    prefix = torch.zeros(b, s, dtype=torch.long)
    prefix[:, :4] = 1
    document = torch.tensor([[1] * 6 + [2] * 4, [1] * 10])
    return {"causal": None, "prefix_lm": attention_mask("prefix_lm", None, prefix),
            "packed": attention_mask("causal", None, None, document=document)}


def allowed_by(mask: torch.Tensor | None, b: int, s: int) -> torch.Tensor:
    """The boolean [B, 1, S, S] that `mask` stands for (None: causal)."""
    return torch.ones(b, 1, s, s, dtype=torch.bool).tril() if mask is None else mask
