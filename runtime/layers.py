"""Decoder building blocks: norms, rotary positions, GQA attention (and the attend it shares with
latent attention, runtime/mla.py), dense MLPs.

Written to be traced by torch.fx: no Python branch depends on tensor values, only on config.
RMSNorm and RoPE go through `vlac.runtime.kernels` with backend "auto" (Triton kernels on CUDA,
the PyTorch references elsewhere). The kernel entry points inspect their inputs in Python (device,
shape checks), so they are registered with `torch.fx.wrap`: each call is one `call_function`
node whose output has the input's shape, and meta/fake propagation runs the reference.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from vlac.spec.architecture import Backbone

from .kernels import apply_rope, rms_norm
from .attention_sinks import SinkLogits, sink_mask, sink_query, with_sink_slot
from .masks import chunk_mask, sliding_window_mask

torch.fx.wrap("rms_norm")
torch.fx.wrap("apply_rope")
torch.fx.wrap("sliding_window_mask")  # one node: the lowering reads its window (compiler/node_costs.py)
torch.fx.wrap("chunk_mask")  # likewise its chunk, and the sinks' mask (compiler/attention_pairs.py)
torch.fx.wrap("sink_mask")


class RMSNorm(nn.Module):
    """y = x * rsqrt(mean(x^2) + eps) * weight, statistics in fp32 whatever the compute dtype
    (bf16 mean-of-squares loses too much); output in x's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


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
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, start: int = 0,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k: [B, S, heads, D]; positions start .. start+S-1 (start > 0 when decoding with a
        KV cache), or per token `positions` [B, S] (packed rows: each document from 0)."""
        if positions is not None:
            return rotate_at(q, k, self.cos, self.sin, positions)
        s = q.size(1)
        # narrow, not slicing: the buffer is a real tensor and s a Proxy under symbolic tracing
        cos = torch.narrow(self.cos, 0, start, s).to(q.dtype)
        sin = torch.narrow(self.sin, 0, start, s).to(q.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


def rotate_at(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE of q, k [B, S, heads, D] at per-token `positions` [B, S] (rows of the tables cos/sin
    [max_len, D]). The batch is flattened into one sequence of B*S tokens, so the kernels' [S, D]
    table contract (and the Triton kernel) serves rows whose positions differ."""
    cos = F.embedding(positions, cos).flatten(0, 1).to(q.dtype)
    sin = F.embedding(positions, sin).flatten(0, 1).to(q.dtype)
    q_rot = apply_rope(q.flatten(0, 1).unsqueeze(0), cos, sin)
    k_rot = apply_rope(k.flatten(0, 1).unsqueeze(0), cos, sin)
    return q_rot.view_as(q), k_rot.view_as(k)


class AttentionCore(nn.Module):
    """The attend-only state and code of a decoder self-attention, shared by `Attention` and
    runtime/mla.LatentAttention, which build the projections and define `project(x, start,
    positions)` -> q, k [B,S,H,Dqk] and v [B,S,H,Dv] (-1 instead of the head count in their views:
    tensor parallelism shards the projections, and the local head count then follows from the local
    weight instead of the global config).

    `mask` is None for the default pattern (causal, or full when `causal=False`), which lets SDPA
    pick a fused kernel, or a boolean [B, 1, Sq, Sk] tensor (True = may attend) for image-
    bidirectional, prefix-LM and segment-memory masks. While `kv_cache` holds a `LayerCache`
    (set by vlac.runtime.generate.decoding, None otherwise, so traced graphs never see it) the
    new keys/values are appended to it and queries attend to the whole cache. `kv_gather`, None
    except under context parallelism (runtime/parallel/context_parallel.py), maps this rank's
    keys/values [B,S,Hkv,D] to those of the whole sequence; the mask then has that many columns.
    `window` > 0 (a sliding-window layer, Backbone.window_at) restricts the mask to keys fewer
    than `window` positions away (runtime/masks.py); SDPA then gets an explicit mask. Under
    context parallelism `token_positions` (set beside `kv_gather`) gives the sequence positions of
    this rank's queries and of the gathered keys, which the window is measured between.
    `chunk` > 0 (Backbone.chunk_at) likewise keeps the keys of each query's own chunk, and `sinks`
    gives every head a learned sink logit (runtime/attention_sinks.py), as one more key.
    """

    def __init__(self, heads: int, kv_heads: int, qk_head_dim: int, dropout: float, causal: bool = True,
                 window: int = 0, chunk: int = 0, sinks: bool = False):
        super().__init__()
        if (window or chunk) and not causal:
            raise ValueError(f"window={window} (backbone.sliding_window) or chunk={chunk} (backbone.attention_chunk) "
                             f"applies to causal attention (the mask None stands for causal); build a non-causal "
                             f"attention with window=0 and chunk=0")
        if window and chunk:
            raise ValueError(f"window={window} and chunk={chunk}: a layer attends through a sliding window or a chunk, "
                             f"not both; make backbone.sliding_window_layers and attention_chunk_layers disjoint")
        self.n_heads, self.n_kv = heads, kv_heads
        self.causal, self.window, self.chunk, self.dropout = causal, window, chunk, dropout
        # SDPA's default scale (1/sqrt of q's width), stated for the sink query, which widens q
        self.softmax_scale = qk_head_dim ** -0.5
        # the first submodule: its init draws from the RNG before the subclass's projections do
        self.sinks = SinkLogits(heads) if sinks else None
        self.kv_cache = None
        self.kv_gather = None
        self.token_positions = None

    @property
    def start(self) -> int:
        """Position of the first new token: the cached length while decoding, else 0."""
        return self.kv_cache.length if self.kv_cache is not None else 0

    def attend(self, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        """SDPA over [B,S,H,D] inputs; returns [B, S, Hq*Dv] before the output projection."""
        b, s = q.size(0), q.size(1)
        if self.kv_gather is not None:
            k, v = self.kv_gather(k, v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        cache = self.kv_cache
        if cache is not None:
            k, v = cache.append(k, v)
            if mask is None and s > 1:  # causal over the new block, full over the cached past
                mask = cache.causal_mask(s, q.device)
        if self.window:  # decided by the config: traceable
            at = self.token_positions() if self.token_positions is not None else None
            mask = sliding_window_mask(mask, q, k, self.window, at)
        if self.chunk:
            at = self.token_positions() if self.token_positions is not None else None
            mask = chunk_mask(mask, q, k, self.chunk, at)
        p = self.dropout if self.training else 0.0
        causal = self.causal and mask is None and cache is None
        extra = {}
        if self.sinks is not None:  # one more key (runtime/attention_sinks.py), at the model's softmax scale
            extra["scale"] = self.softmax_scale
            mask, causal = sink_mask(mask, q, k, causal), False
            q = sink_query(q, self.sinks(), extra["scale"])
            k, v = with_sink_slot(k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal,
                                           enable_gqa=self.n_kv != self.n_heads, **extra)
        if self.sinks is not None:
            y = y[..., :-1]  # the sink's dimension of the values: zero
        return y.transpose(1, 2).reshape(b, s, -1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.project(x, self.start, positions)
        return self.wo(self.attend(q, k, v, mask))


class Attention(AttentionCore):
    """Grouped-query attention through scaled_dot_product_attention: q/k/v projections of the
    residual stream, optionally q/k-normed per head and rotated, and `AttentionCore`'s attend
    (masks, windows, chunks, sinks, KV cache, context parallelism's seams)."""

    def __init__(self, cfg: Backbone, causal: bool = True, window: int = 0, chunk: int = 0, sinks: bool = False):
        super().__init__(cfg.heads, cfg.n_kv_heads, cfg.d_head, cfg.dropout, causal, window, chunk, sinks)
        self.d_head = cfg.d_head
        d = cfg.hidden
        qkv_bias = cfg.bias or cfg.qkv_bias
        self.wq = nn.Linear(d, self.n_heads * self.d_head, bias=qkv_bias)
        self.wk = nn.Linear(d, self.n_kv * self.d_head, bias=qkv_bias)
        self.wv = nn.Linear(d, self.n_kv * self.d_head, bias=qkv_bias)
        self.wo = nn.Linear(self.n_heads * self.d_head, d, bias=cfg.bias)
        self.q_norm = RMSNorm(self.d_head, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.d_head, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.rotary = Rotary(self.d_head, cfg.context_length, cfg.rope_theta) if cfg.positions == "rope" else None

    def project(self, x: torch.Tensor, start: int = 0, positions: torch.Tensor | None = None):
        """q [B,S,Hq,D], k and v [B,S,Hkv,D], normed and rotated (at `positions` [B, S] when
        given, else start .. start+S-1)."""
        b, s = x.size(0), x.size(1)
        q = self.q_norm(self.wq(x).view(b, s, -1, self.d_head))
        k = self.k_norm(self.wk(x).view(b, s, -1, self.d_head))
        v = self.wv(x).view(b, s, -1, self.d_head)
        if self.rotary is not None:
            q, k = self.rotary(q, k, start, positions)
        return q, k, v


class MLP(nn.Module):
    """SwiGLU (w2(silu(w1 x) * w3 x)) or GELU (w2(gelu(w1 x))) feed-forward."""

    def __init__(self, cfg: Backbone, hidden: int | None = None, dropout: float | None = None):
        super().__init__()
        d, f = cfg.hidden, hidden or cfg.d_ffn
        self.swiglu = cfg.mlp == "swiglu"
        self.w1 = nn.Linear(d, f, bias=cfg.bias)
        self.w3 = nn.Linear(d, f, bias=cfg.bias) if self.swiglu else None
        self.w2 = nn.Linear(f, d, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout if dropout is None else dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.w1(x)) * self.w3(x) if self.swiglu else F.gelu(self.w1(x), approximate="tanh")
        return self.drop(self.w2(h))


def sub_backbone(cfg: Backbone, width: int, ffn: int | None = None, positions: str = "none") -> Backbone:
    """A Backbone config for an auxiliary transformer (encoders, resampler, cross-attention) of
    another width: heads of the backbone's head width where it divides, else one head."""
    d_head = cfg.d_head if width % cfg.d_head == 0 else width
    return cfg.model_copy(update={"hidden": width, "heads": width // d_head, "kv_heads": None, "head_dim": d_head,
                                  "ffn_hidden": ffn or 4 * width, "positions": positions})
