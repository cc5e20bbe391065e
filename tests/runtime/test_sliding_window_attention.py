"""Sliding-window attention in the runtime: one layer against a naive masked softmax, the window
composed with every other mask and with context parallelism's chunk layout (KV-cache decoding of a
local/global model: test_generate.py; a cp2 run: `vlac verify --layouts cp2`)."""

import math

import pytest
import torch

import vlac
from vlac.runtime.layers import Attention
from vlac.runtime.masks import attention_mask, sliding_window_mask

from runtime_helpers import TINY

WINDOW = 3


def _naive(attn: Attention, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) where allowed) v, each query head reading its key/value group."""
    q, k, v = (t.transpose(1, 2) for t in attn.project(x))
    group = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return attn.wo((probs @ v).transpose(1, 2).flatten(2))


def _band(s: int, window: int, causal: bool) -> torch.Tensor:
    i, j = torch.arange(s).unsqueeze(1), torch.arange(s).unsqueeze(0)
    return ((i - j >= 0) if causal else torch.ones(s, s, dtype=torch.bool)) & ((i - j).abs() < window)


@pytest.mark.parametrize("kind", ["causal", "prefix_lm", "packed"])
def test_windowed_attention_equals_a_naive_masked_softmax(kind):
    exp = vlac.load(TINY, ["moe=null"])
    torch.manual_seed(0)
    attn = Attention(exp.backbone, window=WINDOW).eval()
    b, s = 2, 10
    x = torch.randn(b, s, exp.backbone.hidden)
    prefix = torch.zeros(b, s, dtype=torch.long)
    prefix[:, :4] = 1
    document = torch.tensor([[1] * 6 + [2] * 4, [1] * 10])
    mask = {"causal": None, "prefix_lm": attention_mask("prefix_lm", None, prefix),
            "packed": attention_mask("causal", None, None, document=document)}[kind]
    base = torch.ones(b, 1, s, s, dtype=torch.bool).tril() if mask is None else mask
    allowed = base & _band(s, WINDOW, causal=False)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask), _naive(attn, x, allowed), atol=1e-6, rtol=1e-5)
        full = Attention(exp.backbone).eval()
        full.load_state_dict(attn.state_dict())
        assert (full(x, mask) - attn(x, mask)).abs().max() > 1e-3  # the window changes the result


def test_the_window_composes_with_each_mask_by_intersection():
    s = 9
    q = k = torch.zeros(1, 1, s, 4)
    causal = sliding_window_mask(None, q, k, WINDOW)
    assert torch.equal(causal[0, 0], _band(s, WINDOW, causal=True))
    assert causal[0, 0].sum(1).tolist() == [min(p + 1, WINDOW) for p in range(s)]
    span = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0, 0]])  # a bidirectional image span of 5 tokens
    image = attention_mask("bidirectional_image", span, None)
    windowed = sliding_window_mask(image, q, k, WINDOW)
    assert torch.equal(windowed, image & _band(s, WINDOW, causal=False))
    assert windowed[0, 0, 2, 4] and not windowed[0, 0, 2, 5]  # inside the span: forward within the window only
    # decoding: 2 new queries are the last positions of 7 keys
    step = sliding_window_mask(None, q[:, :, :2], k[:, :, :7], WINDOW)
    assert step[0, 0].tolist() == [[False, False, False, True, True, True, False],
                                   [False, False, False, False, True, True, True]]


@pytest.mark.parametrize("cp", [2, 4])
def test_context_parallel_ranks_get_the_rows_of_the_whole_sequence(cp):
    """A cp rank's queries (two chunks) against the gathered keys (rank order), measured between
    global positions, give exactly its rows of the single-process windowed mask."""
    from vlac.runtime.parallel.context_parallel import SequenceLayout

    s = 16
    q = k = torch.zeros(1, 1, s, 4)
    span = torch.tensor([[0, 1, 1, 1, 1, 0, 0, 0, 2, 2, 2, 0, 0, 0, 0, 0]])
    for base in (None, attention_mask("bidirectional_image", span, None)):
        whole = sliding_window_mask(base, q, k, WINDOW)
        for rank in range(cp):
            layout = SequenceLayout.build(s, cp, rank, torch.device("cpu"))
            rows = sliding_window_mask(layout.mask_rows(base), q[:, :, :s // cp], k, WINDOW,
                                       (layout.local, layout.gathered))
            assert torch.equal(rows, layout.mask_rows(whole))


def test_a_window_on_non_causal_attention_is_refused():
    with pytest.raises(ValueError, match="causal"):
        Attention(vlac.load(TINY).backbone, causal=False, window=WINDOW)
