"""The FP8 KV cache: float8 storage with per-row scales from the blockwise cast kernel, its
bytes, its error against the fp32 cache, and the Triton cast (interpreter) against the reference."""

import pytest
import torch

import vlac
from vlac.runtime import kernels
from vlac.runtime.data import SyntheticData
from vlac.runtime.generate import FP8_CACHE_DTYPE, decoding, dropless_routing, generate, make_cache
from vlac.runtime.losses import Objective
from vlac.runtime.model import build_model
from vlac.runtime.tokenizers.vq import single_thread

from runtime_helpers import TINY

E4M3_MAX = torch.finfo(FP8_CACHE_DTYPE).max
# e4m3 keeps 3 mantissa bits: a normal value is rounded to within half its spacing, 2^-4 of
# itself; below the smallest normal (2^-6) the spacing stays 2^-9, so the error is <= 2^-10.
E4M3_REL, E4M3_SUBNORMAL_ABS = 2.0 ** -4, 2.0 ** -10
# RMS rounding error of a cached value: spacing/sqrt(12), 2^-3 * |x| / 3.46 / ~1.5 ~= 2.4 % of it.
# Cached K/V enter the logits through softmax averages and a residual stream the cache does not
# touch, so the logits' relative error stays below the values' own: 2^-5 (3.1 %) bounds it.
LOGITS_REL_TOL = 2.0 ** -5
PROMPT, TOTAL, BATCH = 8, 40, 4


@pytest.fixture(scope="module")
def trained():
    """The tiny VLA after 30 AdamW steps, and a held-out batch: a random-init model's logits are
    nearly flat (argmax margins ~1e-3), which would make token agreement a coin toss."""
    torch.manual_seed(0)
    exp = vlac.load(TINY)
    model = build_model(exp)
    objective, data = Objective(model, exp), SyntheticData(exp)
    opt = torch.optim.AdamW(model.parameters(), lr=exp.optimizer.lr, weight_decay=0.0)
    with single_thread():  # tiny model: one thread beats two on a shared machine
        train(objective, data, opt, exp, steps=30)
    held_out = data.micro_batch(10_000, 0, BATCH, 1, torch.device("cpu"))
    return model.eval(), held_out["tokens"][:, :TOTAL], held_out["modality"][:, :TOTAL]


def train(objective, data, opt, exp, steps):
    for step in range(steps):
        loss = objective(data.micro_batch(step, 0, exp.train.global_batch, data.global_loss_tokens(step),
                                          torch.device("cpu")))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def decode_logits(model, tokens, modality, dtype, backend="auto"):
    """Prefill PROMPT tokens, then feed the rest one at a time (teacher forcing): all logits."""
    step = lambda a, b: {"tokens": tokens[:, a:b], "modality": modality[:, a:b]}  # noqa: E731
    cache = make_cache(model, tokens.size(0), tokens.size(1), dtype, backend)
    with torch.no_grad(), dropless_routing(model), decoding(model, cache):
        out = [model(step(0, PROMPT))["logits"]]
        out += [model(step(i, i + 1))["logits"] for i in range(PROMPT, tokens.size(1))]
    return torch.cat(out, 1), cache


def relative_error(got, ref):
    return float((got - ref).norm() / ref.norm())


def test_the_fp8_setting_stores_float8_and_reports_fp8_bytes():
    exp = vlac.load(TINY, ["kv_cache.dtype=fp8"])
    model = build_model(exp).eval()
    bb = exp.backbone
    cache = make_cache(model, 3, 32)  # the spec's dtype, on CPU too
    for layer in cache.layers:
        for t in (layer.k, layer.v):
            assert t.data.dtype == torch.float8_e4m3fn and t.data.shape == (3, bb.n_kv_heads, 32, bb.d_head)
            assert t.scales.dtype == torch.float32 and t.scales.shape == (3, bb.n_kv_heads, 32)
    per_layer = 2 * 3 * bb.n_kv_heads * 32 * (bb.d_head * 1 + 4)  # K and V: a byte per value, a scale per row
    assert cache.nbytes == len(model.layers) * per_layer
    fp32 = make_cache(model, 3, 32, torch.float32)
    assert fp32.nbytes == len(model.layers) * 2 * 3 * bb.n_kv_heads * 32 * bb.d_head * 4
    generate(model, {"tokens": torch.randint(0, 100, (3, 5))}, 4, cache=cache)
    assert cache.length == 8 and cache.layers[0].k.data.dtype == torch.float8_e4m3fn


def test_written_rows_read_back_within_e4m3_rounding():
    exp = vlac.load(TINY)
    cache = make_cache(build_model(exp), 2, 16, FP8_CACHE_DTYPE)
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(2, exp.backbone.n_kv_heads, 5, exp.backbone.d_head, generator=gen)
    k = k * torch.exp2(torch.randint(-12, 12, k.shape[:3] + (1,), generator=gen))  # rows over many binades
    k[0, 0, 1] = 0.0  # an all-zero row: scale 1, reads back as zeros
    layer = cache.layers[0]
    got, _ = layer.append(k, k)
    scales = layer.k.scales[:, :, :5]
    scaled = scales != 1  # every row but the zero row: its largest value lands on the FP8 maximum
    assert torch.equal(layer.k.data[:, :, :5].float().abs().amax(-1)[scaled], torch.full_like(scales[scaled], E4M3_MAX))
    bound = torch.maximum(E4M3_REL * k.abs(), E4M3_SUBNORMAL_ABS / scales[..., None])
    assert ((got - k).abs() <= bound).all()
    assert torch.equal(got[0, 0, 1], torch.zeros_like(got[0, 0, 1])) and scales[0, 0, 1] == 1


def test_fp8_cache_logits_and_tokens_follow_the_fp32_cache(trained):
    model, tokens, modality = trained
    ref, _ = decode_logits(model, tokens, modality, torch.float32)
    fp8, _ = decode_logits(model, tokens, modality, FP8_CACHE_DTYPE)
    bf16, _ = decode_logits(model, tokens, modality, torch.bfloat16)
    err8, err16 = relative_error(fp8, ref), relative_error(bf16, ref)
    # bf16 keeps 8 mantissa bits to e4m3's 3: its error must be clearly smaller (the measure is live)
    assert err16 < err8 / 4 and err8 < LOGITS_REL_TOL
    assert (fp8.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95
    prompt = {"tokens": tokens[:, :PROMPT + 8], "modality": modality[:, :PROMPT + 8]}
    steps = TOTAL - PROMPT - 8
    greedy32 = generate(model, prompt, steps, cache=make_cache(model, BATCH, TOTAL, torch.float32))
    greedy8 = generate(model, prompt, steps, cache=make_cache(model, BATCH, TOTAL, FP8_CACHE_DTYPE))
    assert (greedy8 == greedy32).float().mean() >= 0.9


@pytest.mark.triton
@pytest.mark.skipif(not kernels.triton_available(torch.empty(0)),
                    reason="needs Triton in interpreter mode: TRITON_INTERPRET=1 before triton is imported")
def test_the_triton_cast_fills_the_cache_bit_for_bit_like_the_reference():
    exp = vlac.load(TINY, ["backbone.layers=1"])
    model = build_model(exp).eval()
    tokens = torch.randint(0, exp.vocab_layout().size, (2, PROMPT + 3))
    modality = torch.randint(-1, 3, tokens.shape)
    ref, ref_cache = decode_logits(model, tokens, modality, FP8_CACHE_DTYPE, backend="torch")
    got, got_cache = decode_logits(model, tokens, modality, FP8_CACHE_DTYPE, backend="triton")
    for a, b in zip(got_cache.layers, ref_cache.layers):
        for x, y in ((a.k, b.k), (a.v, b.v)):
            assert torch.equal(x.data.view(torch.uint8), y.data.view(torch.uint8))
            assert torch.equal(x.scales, y.scales)
    assert torch.equal(got, ref)


def test_bad_cache_arguments_are_named():
    model = build_model(vlac.load(TINY))
    with pytest.raises(ValueError, match="make_cache backend must be one of 'auto', 'torch', 'triton'"):
        make_cache(model, 1, backend="cuda")
    with pytest.raises(ValueError, match="make_cache dtype"):
        make_cache(model, 1, dtype=torch.int8)
