"""Chunked attention (Llama 4) and attention sinks (gpt-oss) in the runtime: one layer against a
plain softmax (attention_reference.py), composition with the other masks, context parallelism's
rows, and the sinks' gradient (a cp2 / tp2 run: tests/vlac/test_verify_attention_variants.py; KV-cache decoding:
test_generate.py)."""

import pytest
import torch

import vlac
from vlac.runtime.layers import Attention
from vlac.runtime.masks import attention_mask, chunk_mask

from attention_reference import allowed_by, layout_masks, reference_attention
from runtime_helpers import TINY

CHUNK = 4


def _chunks(s: int, chunk: int) -> torch.Tensor:
    i, j = torch.arange(s).unsqueeze(1), torch.arange(s).unsqueeze(0)
    return (i // chunk) == (j // chunk)


@pytest.mark.parametrize("kind", ["causal", "prefix_lm", "packed"])
def test_chunked_attention_equals_a_plain_softmax_inside_each_chunk(kind):
    exp = vlac.load(TINY, ["moe=null"])
    torch.manual_seed(0)
    attn = Attention(exp.backbone, chunk=CHUNK).eval()
    b, s = 2, 10
    x = torch.randn(b, s, exp.backbone.hidden)
    mask = layout_masks(b, s)[kind]
    with torch.no_grad():
        want = reference_attention(attn, x, allowed_by(mask, b, s) & _chunks(s, CHUNK))
        torch.testing.assert_close(attn(x, mask), want, atol=1e-6, rtol=1e-5)
        full = Attention(exp.backbone).eval()
        full.load_state_dict(attn.state_dict())
        assert (full(x, mask) - attn(x, mask)).abs().max() > 1e-3  # the chunks change the result


def test_the_chunk_mask_keeps_each_querys_earlier_keys_in_its_chunk():
    s = 10
    q = k = torch.zeros(1, 1, s, 4)
    causal = chunk_mask(None, q, k, CHUNK)[0, 0]
    assert causal.sum(1).tolist() == [p % CHUNK + 1 for p in range(s)]
    # decoding: 2 new queries at positions 5 and 6 of 7 keys see 4..5 and 4..6
    step = chunk_mask(None, q[:, :, :2], k[:, :, :7], CHUNK)[0, 0]
    assert step.tolist() == [[False] * 4 + [True, True, False], [False] * 4 + [True] * 3]


@pytest.mark.parametrize("cp", [2, 4])
def test_context_parallel_ranks_get_the_chunked_rows_of_the_whole_sequence(cp):
    """Chunks cut on global positions: a cp rank's rows against the gathered keys are exactly its
    rows of the single-process mask (the chunk, 6, straddles the layout's chunks of 16/(2 cp))."""
    from vlac.runtime.parallel.context_parallel import SequenceLayout

    s = 16
    q = k = torch.zeros(1, 1, s, 4)
    span = torch.tensor([[0, 1, 1, 1, 1, 0, 0, 0, 2, 2, 2, 0, 0, 0, 0, 0]])
    for base in (None, attention_mask("bidirectional_image", span, None)):
        whole = chunk_mask(base, q, k, 6)
        for rank in range(cp):
            layout = SequenceLayout.build(s, cp, rank, torch.device("cpu"))
            rows = chunk_mask(layout.mask_rows(base), q[:, :, :s // cp], k, 6, (layout.local, layout.gathered))
            assert torch.equal(rows, layout.mask_rows(whole))


@pytest.mark.parametrize("kind", ["causal", "prefix_lm", "packed"])
def test_sinks_equal_a_softmax_with_the_sink_column_dropped(kind):
    exp = vlac.load(TINY, ["moe=null"])
    torch.manual_seed(0)
    attn = Attention(exp.backbone, sinks=True)
    with torch.no_grad():
        attn.sinks.weight.copy_(torch.linspace(-2.0, 3.0, exp.backbone.heads))  # sinks that matter
    b, s = 2, 10
    x = torch.randn(b, s, exp.backbone.hidden)
    mask = layout_masks(b, s)[kind]
    allowed = allowed_by(mask, b, s)
    got = attn(x, mask)
    want = reference_attention(attn, x, allowed, attn.sinks.weight)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    plain = Attention(exp.backbone).eval()
    plain.load_state_dict({k: v for k, v in attn.state_dict().items() if not k.startswith("sinks")})
    assert (plain(x, mask) - got).abs().max() > 1e-3  # the sinks change the result
    # the sink logits learn: their gradient is the softmax's
    got.square().sum().backward()
    mine = attn.sinks.weight.grad.clone()
    attn.zero_grad()
    reference_attention(attn, x, allowed, attn.sinks.weight).square().sum().backward()
    torch.testing.assert_close(mine, attn.sinks.weight.grad, atol=1e-6, rtol=1e-5)
    assert mine.abs().min() > 0


def test_sinks_compose_with_a_chunk_and_with_decoding_past_a_cache():
    exp = vlac.load(TINY, ["moe=null"])
    torch.manual_seed(1)
    attn = Attention(exp.backbone, chunk=CHUNK, sinks=True).eval()
    s = 10
    x = torch.randn(1, s, exp.backbone.hidden)
    allowed = allowed_by(None, 1, s) & _chunks(s, CHUNK)
    with torch.no_grad():
        want = reference_attention(attn, x, allowed, attn.sinks.weight)
        torch.testing.assert_close(attn(x), want, atol=1e-6, rtol=1e-5)


def test_sinks_start_as_gpt_oss_initialises_them():
    """transformers' GptOssPreTrainedModel._init_weights: normal_(sinks, 0, initializer_range 0.02)."""
    torch.manual_seed(0)
    attn = Attention(vlac.load(TINY, ["backbone.heads=8"]).backbone, sinks=True)
    w = attn.sinks.weight
    assert w.shape == (8,) and w.dtype == torch.float32 and 0 < w.abs().max() < 0.1


def test_a_chunk_on_non_causal_attention_or_beside_a_window_is_refused():
    bb = vlac.load(TINY).backbone
    with pytest.raises(ValueError, match="causal"):
        Attention(bb, causal=False, chunk=CHUNK)
    with pytest.raises(ValueError, match="not both"):
        Attention(bb, window=3, chunk=CHUNK)

