"""Closed forms of one multi-head latent attention block (runtime/mla.py; DeepSeek-V2 Sec. 2.1,
DeepSeek-V3 Sec. 2.1.1), the counterpart of vlac.compiler.formulas for MLA: parameters, forward
FLOPs and what tensor parallelism divides. The lowered graph must agree with them exactly
(tests/compiler/test_mla_costs.py).

Symbols: h hidden, H heads, r_q q_lora_rank (None: queries projected from x), r_kv kv_lora_rank,
d_n qk_nope_head_dim, d_r qk_rope_head_dim, d_v v_head_dim, s sequence, b micro-batch.

  down path (replicated over tp): W_dq h*r_q + RMSNorm r_q, W_dkv h*(r_kv + d_r) + RMSNorm r_kv
  up path (split over tp by heads): W_uq r_q*H*(d_n + d_r) (or W_q h*H*(d_n + d_r)),
                                    W_ukv r_kv*H*(d_n + d_v), W_o H*d_v*h
  attention, per (query, key) pair and head: 2*(d_n + d_r) for QK^T and 2*d_v for PV;
  causal: s(s+1)/2 pairs counted as s^2/2 (the graph's convention, node_costs.attention_flops).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LatentAttentionShape:
    hidden: int
    heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @classmethod
    def of(cls, backbone) -> LatentAttentionShape:
        m = backbone.mla
        return cls(backbone.hidden, backbone.heads, m.q_lora_rank, m.kv_lora_rank, m.qk_nope_head_dim,
                   m.qk_rope_head_dim, m.v_head_dim)

    @property
    def qk_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def gemm_weights(self) -> dict[str, int]:
        """Weights of each projection (no biases), named as runtime/mla.py names them."""
        h, H = self.hidden, self.heads
        out = {"latent.wkv_down": h * (self.kv_lora_rank + self.qk_rope_head_dim),
               "wkv_up": self.kv_lora_rank * H * (self.qk_nope_head_dim + self.v_head_dim),
               "wo": H * self.v_head_dim * h}
        if self.q_lora_rank is None:
            out["wq"] = h * H * self.qk_dim
        else:
            out["latent.wq_down"] = h * self.q_lora_rank
            out["wq_up"] = self.q_lora_rank * H * self.qk_dim
        return out

    def norm_weights(self) -> int:
        return self.kv_lora_rank + (self.q_lora_rank or 0)

    def parameters(self) -> int:
        return sum(self.gemm_weights().values()) + self.norm_weights()

    def replicated_parameters(self) -> int:
        """Of `parameters`, what every tensor-parallel rank holds whole: the down path."""
        return sum(v for k, v in self.gemm_weights().items() if k.startswith("latent.")) + self.norm_weights()

    def gemm_flops(self, s: int, b: int) -> int:
        """Forward FLOPs of the projections for b sequences of s tokens."""
        return 2 * s * b * sum(self.gemm_weights().values())

    def attention_flops(self, s: int, b: int, causal: bool = True) -> float:
        """Forward FLOPs of QK^T and PV (causal: half the square, as the graph counts them)."""
        dense = 2.0 * b * self.heads * s * s * (self.qk_dim + self.v_head_dim)
        return dense / 2 if causal else dense

    def forward_flops(self, s: int, b: int, causal: bool = True) -> float:
        return self.gemm_flops(s, b) + self.attention_flops(s, b, causal)


__all__ = ["LatentAttentionShape"]
