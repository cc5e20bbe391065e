"""Multi-head latent attention in the runtime (runtime/mla.py): one layer against a reference
written from the DeepSeek-V2 equations (Sec. 2.1.2-2.1.3), with and without a query latent, with a
sliding window; the decoder uses it when the spec asks; KV-cache decoding equals the full forward."""

import math

import pytest
import torch
import torch.nn.functional as F

import vlac
from vlac.runtime.generate import decoding, dropless_routing, make_cache
from vlac.runtime.mla import LatentAttention
from vlac.runtime.model import build_model

from runtime_helpers import TINY

MLA = "backbone.mla={q_lora_rank: 24, kv_lora_rank: 12, qk_rope_head_dim: 8, qk_nope_head_dim: 6, v_head_dim: 10}"
MLA_NO_Q_LATENT = "backbone.mla={q_lora_rank: null, kv_lora_rank: 12, qk_rope_head_dim: 4, qk_nope_head_dim: 6, v_head_dim: 5}"


def _exp(*overrides):
    return vlac.load(TINY, ["moe=null", "backbone.kv_heads=null", *overrides])


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x, pos, theta):
    """Rotate-half RoPE of x [B, S, H, D] at positions pos [S], written out."""
    d = x.size(-1)
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = torch.cat([torch.outer(pos.float(), inv)] * 2, -1)[None, :, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * ang.cos() + torch.cat([-x2, x1], -1) * ang.sin()


def _reference(attn: LatentAttention, cfg, x, allowed):
    """The MLA equations with attn's weights, head by head, and a masked softmax."""
    m, lat = cfg.mla, attn.latent
    b, s, h = x.size(0), x.size(1), cfg.heads
    pos = torch.arange(s)
    if m.q_lora_rank is None:
        q = x @ attn.wq.weight.T
    else:
        q = _rms(x @ lat.wq_down.weight.T, lat.q_norm.weight, cfg.norm_eps) @ attn.wq_up.weight.T
    q = q.view(b, s, h, m.qk_head_dim)
    ckv = x @ lat.wkv_down.weight.T
    c, k_pe = ckv[..., :m.kv_lora_rank], ckv[..., m.kv_lora_rank:]
    kv = (_rms(c, lat.kv_norm.weight, cfg.norm_eps) @ attn.wkv_up.weight.T).view(b, s, h, -1)
    k_nope, v = kv[..., :m.qk_nope_head_dim], kv[..., m.qk_nope_head_dim:]
    q_pe = _rope(q[..., m.qk_nope_head_dim:], pos, cfg.rope_theta)
    k_pe = _rope(k_pe.unsqueeze(2), pos, cfg.rope_theta)  # one rotated key per token
    out = torch.empty(b, s, h, m.v_head_dim)
    for i in range(h):
        qi = torch.cat([q[:, :, i, :m.qk_nope_head_dim], q_pe[:, :, i]], -1)
        ki = torch.cat([k_nope[:, :, i], k_pe[:, :, 0]], -1)
        scores = qi @ ki.transpose(1, 2) / math.sqrt(m.qk_nope_head_dim + m.qk_rope_head_dim)
        out[:, :, i] = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v[:, :, i]
    return out.flatten(2) @ attn.wo.weight.T


@pytest.mark.parametrize("mla,window,chunk", [(MLA, 0, 0), (MLA_NO_Q_LATENT, 0, 0), (MLA, 3, 0), (MLA, 0, 4)],
                         ids=["q-latent", "direct-q", "q-latent-window3", "q-latent-chunk4"])
def test_latent_attention_equals_the_equations(mla, window, chunk):
    cfg = _exp(mla).backbone
    torch.manual_seed(0)
    attn = LatentAttention(cfg, window=window, chunk=chunk).eval()
    for p in attn.parameters():  # norms away from 1, so their weights are checked too
        p.data.uniform_(0.5, 1.5) if p.dim() == 1 else None
    x = torch.randn(2, 9, cfg.hidden)
    i, j = torch.arange(9).unsqueeze(1), torch.arange(9).unsqueeze(0)
    allowed = (j <= i) & ((i - j < window) if window else True) & ((i // chunk == j // chunk) if chunk else True)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _reference(attn, cfg, x, allowed), atol=1e-5, rtol=1e-5)


def test_the_decoder_builds_latent_attention_with_deepseek_shapes():
    model = build_model(_exp(MLA))
    attn = model.layers[0].attn
    assert isinstance(attn, LatentAttention)
    shapes = {n: tuple(p.shape) for n, p in attn.named_parameters()}
    assert shapes == {"latent.wq_down.weight": (24, 64), "latent.q_norm.weight": (24,),
                      "latent.wkv_down.weight": (12 + 8, 64), "latent.kv_norm.weight": (12,),
                      "wq_up.weight": (4 * (6 + 8), 24), "wkv_up.weight": (4 * (6 + 10), 12),
                      "wo.weight": (64, 4 * 10)}
    out = model({"tokens": torch.randint(0, 100, (2, 8))})["logits"]
    out.float().sum().backward()
    assert all(p.grad is not None for p in attn.parameters())


@pytest.mark.parametrize("overrides", [[MLA], [MLA_NO_Q_LATENT, "fusion.stream=dual"],
                                       [MLA, "backbone.sliding_window=3", "backbone.sliding_window_layers=global_every:2"]],
                         ids=["mla", "direct-q-dual", "mla-local-global"])
def test_kv_cache_decode_equals_the_full_forward(overrides):
    exp = _exp(*overrides)
    model = build_model(exp).eval()
    tokens = torch.randint(0, exp.vocab_layout().size, (2, 14))
    modality = torch.randint(-1, 3, tokens.shape)  # dual stream: both streams' weights in use
    batch = lambda a, b: {"tokens": tokens[:, a:b], "modality": modality[:, a:b],  # noqa: E731
                          "span": torch.zeros_like(tokens[:, a:b]), "prefix": torch.zeros_like(tokens[:, a:b])}
    with torch.no_grad(), dropless_routing(model):
        full = model(batch(0, 14))["logits"]
        cache = make_cache(model, 2)
        with decoding(model, cache):
            steps = [model(batch(0, 5))["logits"]] + [model(batch(i, i + 1))["logits"] for i in range(5, 14)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    m = exp.backbone.mla
    assert cache.layers[0].k.data.shape[1:] == (4, exp.backbone.context_length, m.qk_head_dim)
    assert cache.layers[0].v.data.shape[-1] == m.v_head_dim


def test_sdpa_scale_is_one_over_sqrt_of_the_query_key_head_width():
    """SDPA's default scale reads q's last dimension: nope + rope, as DeepSeek scales."""
    q, k, v = torch.randn(1, 2, 5, 14), torch.randn(1, 2, 5, 14), torch.randn(1, 2, 5, 10)
    expected = ((q @ k.transpose(-1, -2)) / math.sqrt(14)).softmax(-1) @ v
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), expected)
