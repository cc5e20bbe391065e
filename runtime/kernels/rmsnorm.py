"""Fused RMSNorm: y = x * rsqrt(mean(x^2, -1) + eps) * weight, computed in fp32.

The Triton forward keeps one row in registers and saves the per-row rsqrt for the backward, so
the backward reads x, grad_y and weight once. With xhat = x * rstd and g = grad_y * weight:

    grad_x = rstd * (g - xhat * mean(g * xhat))
    grad_weight = sum over rows of grad_y * xhat

grad_weight is reduced deterministically: each backward program accumulates a strided subset of
rows into its own partial row, and the partial rows are summed afterwards (no atomics).
"""

from __future__ import annotations

import torch

from ._triton import jit, next_power_of_2, num_warps_for

__all__ = ["rms_norm_reference", "rms_norm_triton"]

tl = None  # triton.language, bound at the first kernel launch (Triton is imported lazily)

_MAX_ROW = 65536  # one row must fit in a program's registers


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """PyTorch RMSNorm over the last dim; fp32 math (fp64 stays fp64), output in x's dtype."""
    compute = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(compute)
    rstd = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (xf * rstd * weight.to(compute)).to(x.dtype)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Triton RMSNorm with a fused backward; same contract as :func:`rms_norm_reference`."""
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"weight shape {tuple(weight.shape)} must be x's last dim ({x.shape[-1]},)")
    if x.shape[-1] > _MAX_ROW:
        raise ValueError(f"rows longer than {_MAX_ROW} are not supported, got {x.shape[-1]}")
    return _RMSNorm.apply(x, weight, eps)


class _RMSNorm(torch.autograd.Function):
    """Autograd wrapper: the forward saves rstd per row for the backward kernel."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        x2d = x.reshape(-1, x.shape[-1]).contiguous()
        y = torch.empty_like(x2d)
        rstd = torch.empty(x2d.shape[0], dtype=torch.float32, device=x.device)
        if x2d.numel():
            _rms_norm_fwd_kernel[(x2d.shape[0],)](
                x2d, weight.contiguous(), y, rstd, x2d.shape[1], eps,
                BLOCK_N=next_power_of_2(x2d.shape[1]), num_warps=num_warps_for(x2d.shape[1]),
            )
        ctx.save_for_backward(x2d, weight, rstd)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, grad_y):
        x2d, weight, rstd = ctx.saved_tensors
        rows, cols = x2d.shape
        grad_x = torch.empty_like(x2d)
        programs = min(rows, _backward_programs(x2d.device))
        partial_dw = torch.zeros(max(programs, 1), cols, dtype=torch.float32, device=x2d.device)
        if x2d.numel():
            _rms_norm_bwd_kernel[(programs,)](
                x2d, grad_y.reshape(rows, cols).contiguous(), weight.contiguous(), rstd, grad_x,
                partial_dw, rows, cols, BLOCK_N=next_power_of_2(cols), num_warps=num_warps_for(cols),
            )
        grad_weight = partial_dw.sum(dim=0).to(weight.dtype)
        return grad_x.view(grad_y.shape), grad_weight, None


def _backward_programs(device: torch.device) -> int:
    """Programs for the backward: a few per SM on GPU; few in the interpreter, where each is slow."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8


@jit
def _rms_norm_fwd_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, cols, eps, BLOCK_N: tl.constexpr):
    """One program per row."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    mask = offs < cols
    x = tl.load(x_ptr + row * cols + offs, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / cols + eps)
    tl.store(rstd_ptr + row, rstd)
    tl.store(y_ptr + row * cols + offs, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


@jit
def _rms_norm_bwd_kernel(
    x_ptr, dy_ptr, w_ptr, rstd_ptr, dx_ptr, partial_dw_ptr, rows, cols, BLOCK_N: tl.constexpr
):
    """Program p handles rows p, p + P, p + 2P, ... and writes its grad_weight partial row."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK_N)
    mask = offs < cols
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    base = pid.to(tl.int64) * cols  # int64 offsets: rows * cols may exceed 2^31
    step = tl.num_programs(0).to(tl.int64) * cols
    for row in range(pid, rows, tl.num_programs(0)):
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        xhat = x * rstd
        g = dy * w
        dx = rstd * (g - xhat * (tl.sum(g * xhat, axis=0) / cols))
        tl.store(dx_ptr + base + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw += dy * xhat
        base += step
    tl.store(partial_dw_ptr + pid * cols + offs, dw, mask=mask)
