"""Decoder building blocks: norms, rotary positions, GQA attention, dense MLPs.

Written to be traced by torch.fx: no Python branch depends on tensor values, only on config.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlac.spec.architecture import Backbone


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in fp32 whatever the compute dtype: bf16 mean-of-squares loses too much
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def make_norm(cfg: Backbone, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


class Rotary(nn.Module):
    """RoPE tables for the rotate-half convention; cos/sin are non-persistent buffers so they
    are rebuilt (not checkpointed) and follow the module to any device."""

    def __init__(self, head_dim: int, max_len: int, theta: float):
        super().__init__()
        inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        t = torch.arange(max_len, dtype=torch.float32)
        freqs = torch.outer(t, inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # q, k: [B, H, S, D]
        s = q.shape[-2]
        cos = torch.narrow(self.cos, 0, 0, s).to(q.dtype)
        sin = torch.narrow(self.sin, 0, 0, s).to(q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Attention(nn.Module):
    """Grouped-query self-attention through scaled_dot_product_attention.

    `mask` is None for plain causal attention (lets SDPA pick its fused causal kernel) or a
    boolean [B, 1, S, S] tensor (True = may attend) for image-bidirectional and prefix-LM masks.
    """

    def __init__(self, cfg: Backbone):
        super().__init__()
        self.n_heads, self.n_kv, self.d_head = cfg.heads, cfg.n_kv_heads, cfg.d_head
        d = cfg.hidden
        self.wq = nn.Linear(d, self.n_heads * self.d_head, bias=cfg.bias)
        self.wk = nn.Linear(d, self.n_kv * self.d_head, bias=cfg.bias)
        self.wv = nn.Linear(d, self.n_kv * self.d_head, bias=cfg.bias)
        self.wo = nn.Linear(self.n_heads * self.d_head, d, bias=cfg.bias)
        self.q_norm = RMSNorm(self.d_head, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.d_head, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.rotary = Rotary(self.d_head, cfg.context_length, cfg.rope_theta) if cfg.positions == "rope" else None
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, s = x.size(0), x.size(1)
        # -1 instead of the head count: tensor parallelism shards the projections, and the local
        # head count then follows from the local weight instead of the global config
        q = self.q_norm(self.wq(x).view(b, s, -1, self.d_head)).transpose(1, 2)
        k = self.k_norm(self.wk(x).view(b, s, -1, self.d_head)).transpose(1, 2)
        v = self.wv(x).view(b, s, -1, self.d_head).transpose(1, 2)
        if self.rotary is not None:
            q, k = self.rotary(q, k)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                           is_causal=mask is None, enable_gqa=self.n_kv != self.n_heads)
        return self.wo(y.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, cfg: Backbone, hidden: int | None = None):
        super().__init__()
        d, f = cfg.hidden, hidden or cfg.d_ffn
        self.swiglu = cfg.mlp == "swiglu"
        self.w1 = nn.Linear(d, f, bias=cfg.bias)
        self.w3 = nn.Linear(d, f, bias=cfg.bias) if self.swiglu else None
        self.w2 = nn.Linear(f, d, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.w1(x)) * self.w3(x) if self.swiglu else F.gelu(self.w1(x), approximate="tanh")
        return self.drop(self.w2(h))
