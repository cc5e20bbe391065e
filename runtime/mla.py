"""Multi-head latent attention (MLA), DeepSeek-V2 Sec. 2.1 / DeepSeek-V3 Sec. 2.1.1 (spec:
`backbone.mla`, vlac/spec/latent_attention.py).

    c_q  = RMSNorm(W_dq x)                      [B, S, q_lora_rank]   (or c_q = x: q_lora_rank null)
    q    = W_uq c_q                             [B, S, H, nope + rope]
    c_kv, k_pe = split(W_dkv x)                 [B, S, kv_lora_rank], [B, S, rope]
    k_nope, v = split(W_ukv RMSNorm(c_kv))      [B, S, H, nope], [B, S, H, v]
    q = [q_nope, rope(q_pe)], k = [k_nope, rope(k_pe) for every head]
    out = W_o softmax(q k^T / sqrt(nope + rope)) v

The down path (W_dq, its norm, W_dkv, its norm) lives in `latent`, a module that tensor
parallelism replicates (Megatron-Core does the same): the latents are shared by every head, and
they are small. The up-projections `wq_up` (`wq` without a query latent) and `wkv_up` are laid
out head-major, so splitting their output features column-wise hands each rank whole heads; `wo`
is split row-wise. The attention itself, the KV cache, sliding windows and the seams of context
parallelism are `layers.AttentionCore`'s (shared with standard attention): this module only projects
differently (`project`).

RoPE is the runtime's rotate-half convention on the rotated channels (DeepSeek's checkpoints
interleave channel pairs instead, a fixed permutation of W_uq's and W_dkv's rotated rows; vlac
imports no MLA checkpoint, so training from scratch is unaffected).

The cache holds the per-head keys and values (not the latent): exact, and the same code path as
standard attention; DeepSeek's absorbed inference (caching only c_kv and k_pe) is an inference
optimisation this training runtime does not need.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vlac.spec.architecture import Backbone

from .layers import Attention, AttentionCore, RMSNorm, Rotary


class LatentProjections(nn.Module):
    """x -> (query latent, normed key/value latent, unrotated shared key k_pe [B, S, 1, rope]).
    `tp_replicated`: every tensor-parallel rank runs it whole (runtime/parallel/latent_attention_tp.py;
    the compiler's annotate reads the same mark)."""

    tp_replicated = True

    def __init__(self, cfg: Backbone):
        super().__init__()
        m = cfg.mla
        self.kv_rank, self.rope_dim = m.kv_lora_rank, m.qk_rope_head_dim
        if m.q_lora_rank is not None:
            self.wq_down = nn.Linear(cfg.hidden, m.q_lora_rank, bias=cfg.bias)
            self.q_norm = RMSNorm(m.q_lora_rank, cfg.norm_eps)
        else:
            self.wq_down = self.q_norm = None
        self.wkv_down = nn.Linear(cfg.hidden, m.kv_lora_rank + m.qk_rope_head_dim, bias=cfg.bias)
        self.kv_norm = RMSNorm(m.kv_lora_rank, cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c_q = self.q_norm(self.wq_down(x)) if self.wq_down is not None else x
        c_kv, k_pe = self.wkv_down(x).split([self.kv_rank, self.rope_dim], dim=-1)
        return c_q, self.kv_norm(c_kv), k_pe.unsqueeze(2)


class LatentAttention(AttentionCore):
    """Multi-head latent attention with `AttentionCore`'s attend/forward (masks, windows, KV cache,
    context parallelism's kv_gather and rotary swap). Heads: -1 in the views, so a tensor-parallel
    rank's local head count follows from its slice of the up-projections."""

    def __init__(self, cfg: Backbone, causal: bool = True, window: int = 0, chunk: int = 0):
        m = cfg.mla
        # keys and values per query head (SDPA without GQA); no sinks: refused with mla (spec/latent_attention.refusals)
        super().__init__(cfg.heads, cfg.heads, m.qk_head_dim, cfg.dropout, causal, window, chunk)
        self.nope, self.rope_dim, self.v_dim = m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
        self.latent = LatentProjections(cfg)
        q_in = m.q_lora_rank if m.q_lora_rank is not None else cfg.hidden
        q_name = "wq_up" if m.q_lora_rank is not None else "wq"  # DeepSeek's q_b_proj / q_proj
        setattr(self, q_name, nn.Linear(q_in, cfg.heads * m.qk_head_dim, bias=cfg.bias))
        self.wkv_up = nn.Linear(m.kv_lora_rank, cfg.heads * (m.qk_nope_head_dim + m.v_head_dim), bias=cfg.bias)
        self.wo = nn.Linear(cfg.heads * m.v_head_dim, cfg.hidden, bias=cfg.bias)
        self.column_parallel = (q_name, "wkv_up")  # split by heads over tp (names inside this module)
        self.q_name = q_name
        # the spec requires positions: rope; the rotary part of the queries and of the shared key
        self.rotary = Rotary(m.qk_rope_head_dim, cfg.context_length, cfg.rope_theta)

    def project(self, x: torch.Tensor, start: int = 0, positions: torch.Tensor | None = None):
        """q and k [B,S,H,nope+rope], v [B,S,H,v_head_dim]; rotated at `positions` [B, S] when
        given, else start .. start+S-1."""
        b, s = x.size(0), x.size(1)
        c_q, c_kv, k_pe = self.latent(x)
        q = getattr(self, self.q_name)(c_q).view(b, s, -1, self.nope + self.rope_dim)
        k_nope, v = self.wkv_up(c_kv).view(b, s, -1, self.nope + self.v_dim).split([self.nope, self.v_dim], dim=-1)
        q_nope, q_pe = q.split([self.nope, self.rope_dim], dim=-1)
        q_pe, k_pe = self.rotary(q_pe, k_pe, start, positions)
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, k_pe.expand(-1, -1, k_nope.size(2), -1)], dim=-1)
        return q, k, v


def decoder_attention(cfg: Backbone, window: int = 0, chunk: int = 0, sinks: bool = False) -> AttentionCore:
    """The self-attention of a decoder layer: latent attention when the spec sets backbone.mla
    (which refuses attention_sinks: spec/latent_attention.refusals)."""
    if cfg.mla is not None:
        return LatentAttention(cfg, window=window, chunk=chunk)
    return Attention(cfg, window=window, chunk=chunk, sinks=sinks)


__all__ = ["LatentAttention", "LatentProjections", "decoder_attention"]
