"""The runtime's fused kernels as the lowering runs them on meta tensors.

On the meta device scaled_dot_product_attention takes its unfused math path and saves the [S, S]
probabilities, and the runtime's dropless experts return their output shape without computing
anything. Training runs neither way, so the interpreter runs these two ops as below; the tensors
they create and save are what the CPU and GPU kernels create and save (measured against the CPU
run in vlac.compiler.measure).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from vlac.runtime import moe as _moe

# the dropless expert dispatch is one FX leaf (data-dependent group sizes); absent in older runtimes
DROPLESS_EXPERTS: Callable | None = getattr(_moe, "dropless_experts", None)
DROPLESS_FLOPS: Callable | None = getattr(_moe, "dropless_expert_flops", None)
PERMUTE_ALIGN: int = getattr(_moe, "PERMUTE_ALIGN", 16)


def dropless_rows(tokens: int, top_k: int, experts: int) -> int:
    """Rows of the permuted buffer of dropless experts at their static upper bound: every
    expert's group padded by align - 1 rows (the real count depends on the routing)."""
    return tokens * top_k + experts * (PERMUTE_ALIGN - 1)


def dropless_on_meta(h, idx, weights, w1, w3, w2, dropout, training, gemm_outputs: list | None = None):
    """`dropless_experts` with the tensors its CPU/CUDA path creates and saves, on meta, the
    permuted buffer at its row bound: the saved-bytes rule charges this upper bound (the runtime's
    own meta path returns the output shape without computing anything). The grouped GEMMs'
    results are appended to `gemm_outputs` (what selective recompute keeps of this node)."""
    gemm_outputs = [] if gemm_outputs is None else gemm_outputs
    t, k = idx.shape
    rows = idx.new_zeros(t * k)
    tokens = torch.arange(t, device=h.device).repeat_interleave(k)
    x_perm = h.new_zeros(dropless_rows(t, k, w1.shape[0]), h.shape[1]).index_copy(0, rows, h[tokens])
    a = x_perm @ w1[0]  # a grouped GEMM saves its input and the weights, as this GEMM does
    gemm_outputs.append(a)
    if w3 is not None:
        gate = x_perm @ w3[0]
        gemm_outputs.append(gate)
        a = F.silu(a) * gate
    else:
        a = F.gelu(a, approximate="tanh")
    y_perm = F.dropout(a, dropout, training) @ w2[0]
    gemm_outputs.append(y_perm)
    compute = torch.promote_types(y_perm.dtype, torch.float32)
    gathered = y_perm[rows.view(t, k)].to(compute)
    return (gathered * weights.to(compute).unsqueeze(-1)).sum(dim=1).to(y_perm.dtype)


def fused_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """scaled_dot_product_attention as a fused kernel runs it: (output, log-sum-exp), saving
    q, k, v (grouped key/value heads as they are, no repeat), the output, the fp32 log-sum-exp
    and the additive mask. The op is CPU FlashAttention's (its meta kernel); CUDA FlashAttention
    saves the same tensors, with its output laid out [B, S, H, D] (the CPU kernel follows the
    query's layout, which the runtime's [B, S, H, D] projections make the same).

    Value heads narrower or wider than the query/key heads (multi-head latent attention,
    runtime/mla.py) are outside FlashAttention-2's contract (torch's flash kernels refuse them);
    CUDA then runs the memory-efficient kernel, which saves the same tensors (q, k, v, output,
    fp32 log-sum-exp, the bias) plus its two scalar dropout seeds, and so does the lowering."""
    if v.size(-1) != q.size(-1):
        out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, attn_mask, True, dropout_p, is_causal, scale=scale)
        return out, lse
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)
    return out, lse


__all__ = ["DROPLESS_EXPERTS", "DROPLESS_FLOPS", "PERMUTE_ALIGN", "dropless_on_meta", "dropless_rows",
           "fused_attention"]
