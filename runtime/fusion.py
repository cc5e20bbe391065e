"""How non-text signals meet the language backbone: cross-attention (gated, Flamingo; plain,
CoCa), the perceiver-style resampler (Flamingo, Qwen-VL), and the per-stream weights of a
dual-stream block (separate projections per modality group, one joint attention)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlac.spec.architecture import Backbone

from .layers import MLP, make_norm
from .mla import decoder_attention


class CrossAttention(nn.Module):
    """Queries from x [B,S,d], keys/values from a context [B,M,d]; `context_mask` [B,M] (1 = real
    entry) hides absent media. A query whose context is all absent attends to nothing: its output
    is zeroed instead of SDPA's NaN."""

    def __init__(self, cfg: Backbone):
        super().__init__()
        self.d_head = cfg.d_head
        d, inner = cfg.hidden, cfg.heads * cfg.d_head
        self.wq = nn.Linear(d, inner, bias=cfg.bias)
        self.wk = nn.Linear(d, inner, bias=cfg.bias)
        self.wv = nn.Linear(d, inner, bias=cfg.bias)
        self.wo = nn.Linear(inner, d, bias=cfg.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        b, s, m = x.size(0), x.size(1), context.size(1)
        q = self.wq(x).view(b, s, -1, self.d_head).transpose(1, 2)
        k = self.wk(context).view(b, m, -1, self.d_head).transpose(1, 2)
        v = self.wv(context).view(b, m, -1, self.d_head).transpose(1, 2)
        keep = context_mask > 0
        # an all-absent row would softmax over nothing: let it see everything, then zero it
        any_real = keep.any(-1, keepdim=True)
        mask = (keep | ~any_real).view(b, 1, 1, m)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(b, s, -1) * any_real.view(b, 1, 1).to(y.dtype)
        return self.wo(y)


class GatedCrossAttentionLayer(nn.Module):
    """Flamingo's GATED XATTN-DENSE: x + tanh(a_attn) * xattn(norm x, media), then
    x + tanh(a_ffw) * ffw(norm x). The gates start at zero, so a frozen language model is
    unchanged at initialisation. Without gating (CoCa) both residuals are plain."""

    def __init__(self, cfg: Backbone, gated: bool):
        super().__init__()
        self.attn_norm = make_norm(cfg, cfg.hidden)
        self.attn = CrossAttention(cfg)
        self.mlp_norm = make_norm(cfg, cfg.hidden)
        self.mlp = MLP(cfg)
        self.gated = gated
        if gated:
            self.attn_gate = nn.Parameter(torch.zeros(()))
            self.mlp_gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, media: torch.Tensor, media_mask: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.attn_norm(x), media, media_mask)
        x = x + (torch.tanh(self.attn_gate) * a if self.gated else a)
        f = self.mlp(self.mlp_norm(x))
        return x + (torch.tanh(self.mlp_gate) * f if self.gated else f)


class Resampler(nn.Module):
    """Perceiver resampler: `queries` learned latents cross-attend to the input features (and to
    themselves, as in Flamingo) for `layers` layers, turning a variable-content [B, n, in_dim]
    feature set into a fixed [B, queries, hidden] one."""

    def __init__(self, cfg: Backbone, input_dim: int, queries: int, layers: int):
        super().__init__()
        self.proj = nn.Linear(input_dim, cfg.hidden)
        self.latents = nn.Parameter(torch.randn(queries, cfg.hidden) * 0.02)
        self.layers = nn.ModuleList(_ResamplerLayer(cfg) for _ in range(layers))
        self.norm = make_norm(cfg, cfg.hidden)

    def forward(self, features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        x = self.proj(features)
        lat = self.latents.unsqueeze(0).expand(x.size(0), -1, -1)
        lat_mask = torch.ones_like(lat[..., 0])
        for layer in self.layers:
            lat = layer(lat, torch.cat([x, lat], 1), torch.cat([present.to(lat.dtype), lat_mask], 1))
        return self.norm(lat)


class _ResamplerLayer(nn.Module):
    def __init__(self, cfg: Backbone):
        super().__init__()
        self.norm = make_norm(cfg, cfg.hidden)
        self.attn = CrossAttention(cfg)
        self.mlp_norm = make_norm(cfg, cfg.hidden)
        self.mlp = MLP(cfg)

    def forward(self, lat, context, context_mask):
        lat = lat + self.attn(self.norm(lat), context, context_mask)
        return lat + self.mlp(self.mlp_norm(lat))


class StreamWeights(nn.Module):
    """The second stream of a dual-stream block: its own norms, attention projections and MLP
    (dense). Both streams' projections run on every token and a per-token select keeps one, so
    the block costs 2x the projection FLOPs of a shared block with static shapes; attention
    itself is joint over all tokens."""

    def __init__(self, cfg: Backbone):
        super().__init__()
        self.attn_norm = make_norm(cfg, cfg.hidden)
        self.attn = decoder_attention(cfg)
        self.mlp_norm = make_norm(cfg, cfg.hidden)
        self.mlp = MLP(cfg)


def select_stream(stream: torch.Tensor, main: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per token: `other` where `stream` is 1, `main` where it is 0. `stream` is [B, S] with as
    many trailing unit dims as `main` has beyond [B, S] (no rank arithmetic: ranks are Proxies
    under symbolic tracing)."""
    return main + stream.to(main.dtype) * (other - main)
