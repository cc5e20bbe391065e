"""Multi-head latent attention (MLA): DeepSeek-V2 (DeepSeek-AI 2024, arXiv:2405.04434, Sec. 2.1)
and DeepSeek-V3 (arXiv:2412.19437, Sec. 2.1.1).

Keys and values are generated from one low-rank latent per token (`kv_lora_rank` wide, RMS-
normalised) through an up-projection per head; queries likewise from a `q_lora_rank` latent
(DeepSeek-V2-Lite projects them directly: q_lora_rank null). Positions ride on separate
`qk_rope_head_dim` channels: each query head has its own rotated part, while the rotated key part
is one per token, shared by every head ("decoupled RoPE"). So the query and key heads are
qk_nope_head_dim + qk_rope_head_dim wide, the value heads v_head_dim, and the scores are scaled by
1/sqrt(qk_nope_head_dim + qk_rope_head_dim).

The defaults are DeepSeek-V3's (its config.json: q_lora_rank 1536, kv_lora_rank 512,
qk_rope_head_dim 64, qk_nope_head_dim 128, v_head_dim 128).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field, field_validator

from .base import SpecModel


class LatentAttention(SpecModel):
    """Multi-head latent attention (DeepSeek-V2 Sec. 2.1, DeepSeek-V3 Sec. 2.1.1), as backbone.mla
    (null = standard attention); the defaults are DeepSeek-V3's. Query and key heads are
    qk_nope_head_dim + qk_rope_head_dim wide and scaled by its inverse square root, value heads
    v_head_dim. Needs positions: rope; kv_heads, head-wise qk_norm, qkv_bias and a pretrained
    init are refused with it. Tensor parallelism replicates the down-projections (Megatron-Core)."""

    q_lora_rank: int | None = Field(1536, ge=1, le=2**16, description="width of the query latent (W_dq: hidden -> q_lora_rank, RMSNorm, W_uq up to the heads); null = queries projected directly from the hidden state (DeepSeek-V2-Lite)")
    kv_lora_rank: int = Field(512, ge=1, le=2**16, description="width of the key/value latent, the one vector per token (with the rotated key) that keys and values are up-projected from")
    qk_rope_head_dim: int = Field(64, ge=2, le=2**12, description="rotated (RoPE) channels per query head, and of the one rotated key per token shared by every head; even")
    qk_nope_head_dim: int = Field(128, ge=1, le=2**12, description="channels per query and key head that carry no position")
    v_head_dim: int = Field(128, ge=1, le=2**12, description="value channels per head (the attention output is heads x v_head_dim wide)")

    @field_validator("qk_rope_head_dim")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"{v} is odd; RoPE rotates channel pairs (rotate-half), so use an even width such as {v + 1}")
        return v

    @property
    def qk_head_dim(self) -> int:
        """Width of one query or key head: the positionless and the rotated channels."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@dataclass(frozen=True)
class HeadShape:
    """The attention widths the cost model reads from a backbone: per head, the query/key width,
    the value width and the rotated width; the key/value heads (what context parallelism
    exchanges and K/V tensor parallelism splits). MLA's keys and values are per query head (its
    latent is expanded before attention), so kv_heads = heads there."""

    heads: int
    kv_heads: int
    qk_dim: int
    v_dim: int
    rope_dim: int


def head_shape(bb) -> HeadShape:
    """The HeadShape of a Backbone (standard attention, or its `mla`)."""
    m = bb.mla
    if m is None:
        return HeadShape(bb.heads, bb.n_kv_heads, bb.d_head, bb.d_head, bb.d_head)
    return HeadShape(bb.heads, bb.heads, m.qk_head_dim, m.v_head_dim, m.qk_rope_head_dim)


def refusals(bb) -> list[str]:
    """What a backbone with `mla` combines it with that MLA does not have, each as "field: why;
    fix" (Backbone raises the first)."""
    if bb.mla is None:
        return []
    out = []
    if bb.positions != "rope":
        out.append(f"mla: needs positions: rope (its decoupled key carries the positions on qk_rope_head_dim "
                   f"channels) but positions is {bb.positions!r}; set positions: rope, or mla: null")
    if bb.kv_heads is not None and bb.kv_heads != bb.heads:
        out.append(f"kv_heads: {bb.kv_heads} with mla; latent attention up-projects keys and values for every "
                   f"query head from one shared latent, so leave kv_heads out (null)")
    if bb.qk_norm:
        out.append("qk_norm: true with mla; latent attention normalises its latents (RMSNorm after W_dq and W_dkv) "
                   "instead of per-head queries and keys; set qk_norm: false")
    if bb.qkv_bias:
        out.append("qkv_bias: true with mla; DeepSeek's latent projections have no biases; set qkv_bias: false "
                   "(bias: true gives every linear layer a bias)")
    if bb.attention_sinks:
        out.append("attention_sinks: true with mla; sink logits are not part of DeepSeek's latent attention "
                   "(and vlac has no tensor-parallel split for them there); set attention_sinks: false")
    if bb.init is not None:
        out.append("mla: backbone.init reads Llama-, Mistral- and Qwen-family checkpoints, none of which has latent "
                   "attention; set init: null (random init) or mla: null")
    return out


__all__ = ["HeadShape", "LatentAttention", "head_shape", "refusals"]
