"""Sliding-window attention in the runtime: one layer against the masked softmax of
attention_reference.py, the window composed with every other mask and with context parallelism's
chunk layout (KV-cache decoding of a local/global model: test_generate.py; a cp2 run: `vlac verify
--layouts cp2`)."""

import pytest
import torch

import vlac
from vlac.runtime.layers import Attention
from vlac.runtime.masks import attention_mask, sliding_window_mask

from attention_reference import allowed_by, layout_masks, reference_attention
from runtime_helpers import TINY

WINDOW = 3


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
    mask = layout_masks(b, s)[kind]
    allowed = allowed_by(mask, b, s) & _band(s, WINDOW, causal=False)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask), reference_attention(attn, x, allowed), atol=1e-6, rtol=1e-5)
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
