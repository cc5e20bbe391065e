"""Rotary position embedding, rotate-half convention, for x [B, S, heads, D] and cos/sin [S, D].

    y = x * cos + rotate_half(x) * sin,   rotate_half([x1, x2]) = [-x2, x1]

Writing halves explicitly: y1 = x1 c1 - x2 s1 and y2 = x2 c2 + x1 s2. The transpose gives the
backward, which is the same kernel with the sine terms swapped and negated:
grad_x1 = g1 c1 + g2 s2 and grad_x2 = g2 c2 - g1 s1. No symmetry between the cos/sin halves is
assumed. cos and sin are treated as constants (buffers): the Triton path gives them no gradient.
"""

from __future__ import annotations

import torch

from ._triton import jit, next_power_of_2, num_warps_for

__all__ = ["apply_rope_reference", "apply_rope_triton", "rotate_half"]

tl = None  # triton.language, bound at the first kernel launch (Triton is imported lazily)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _check_shapes(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """x is [B, S, heads, D] with even D; cos and sin are [S, D]."""
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(f"x must be [B, S, heads, D] with even D, got {tuple(x.shape)}")
    expected = (x.shape[1], x.shape[3])
    if tuple(cos.shape) != expected or tuple(sin.shape) != expected:
        raise ValueError(
            f"cos/sin must be [S, D] = {expected}, got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )


def apply_rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """PyTorch RoPE in fp32 (fp64 stays fp64); output in x's dtype."""
    _check_shapes(x, cos, sin)
    compute = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(compute)
    c = cos.to(compute)[None, :, None, :]
    s = sin.to(compute)[None, :, None, :]
    return (xf * c + rotate_half(xf) * s).to(x.dtype)


def apply_rope_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Triton RoPE; same contract as :func:`apply_rope_reference`."""
    _check_shapes(x, cos, sin)
    return _RoPE.apply(x, cos.contiguous(), sin.contiguous())


class _RoPE(torch.autograd.Function):
    """Autograd wrapper: the backward is the rotation's transpose (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rope(x, cos, sin, backward=False)

    @staticmethod
    def backward(ctx, grad_y):
        cos, sin = ctx.saved_tensors
        return _rope(grad_y, cos, sin, backward=True), None, None


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool) -> torch.Tensor:
    """Launch one program per (batch, position); x may be strided except along D."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    batch, seq, heads, dim = x.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        block_heads, block_half = next_power_of_2(heads), next_power_of_2(dim // 2)
        _rope_kernel[(batch * seq,)](
            x, cos, sin, out, seq, heads, x.stride(0), x.stride(1), x.stride(2),
            HALF=dim // 2, BLOCK_HEADS=block_heads, BLOCK_HALF=block_half, BACKWARD=backward,
            num_warps=num_warps_for(block_heads * block_half),
        )
    return out


@jit
def _rope_kernel(
    x_ptr, cos_ptr, sin_ptr, out_ptr, seq, heads, stride_b, stride_s, stride_h,
    HALF: tl.constexpr, BLOCK_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr,
    BACKWARD: tl.constexpr,
):
    """Rotate all heads of one (batch, position): tiles [heads, D/2] for each half."""
    pid = tl.program_id(0).to(tl.int64)
    b, s = pid // seq, pid % seq
    h = tl.arange(0, BLOCK_HEADS)[:, None]
    d = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (h < heads) & (d < HALF)
    x1_ptrs = x_ptr + b * stride_b + s * stride_s + h * stride_h + d
    x1 = tl.load(x1_ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x1_ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    trig = s * (2 * HALF) + d
    c1 = tl.load(cos_ptr + trig, mask=d < HALF, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + trig + HALF, mask=d < HALF, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + trig, mask=d < HALF, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + trig + HALF, mask=d < HALF, other=0.0).to(tl.float32)
    if BACKWARD:
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    o1_ptrs = out_ptr + pid * heads * (2 * HALF) + h * (2 * HALF) + d
    tl.store(o1_ptrs, y1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o1_ptrs + HALF, y2.to(out_ptr.dtype.element_ty), mask=mask)
