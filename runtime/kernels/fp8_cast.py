"""FP8 casts: per-tensor scaled (delayed scaling) and blockwise (1x128 / 128x128) quantization.

Both casts saturate: ``x * scale`` is clamped to the FP8 format's finite range before rounding,
so outliers become +-fp8_max instead of NaN (e4m3fn has no infinity).

Bit-exactness: Triton's CPU interpreter converts fp32 to fp8 without carrying a mantissa round-up
into the exponent (31.1 becomes 16 instead of 32 in e4m3). The kernels therefore round to the FP8
grid themselves, in exact fp32 arithmetic with round-to-nearest-even, and store through an fp8
pointer: the final conversion then sees an exactly representable value, which the interpreter and
the GPU's ``cvt`` both convert exactly. The result matches ``torch``'s cast bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._triton import cdiv, jit, next_power_of_2, num_warps_for

__all__ = [
    "FP8_DTYPES",
    "cast_to_fp8_reference",
    "cast_to_fp8_triton",
    "blockwise_cast_to_fp8_reference",
    "blockwise_cast_to_fp8_triton",
    "blockwise_dequantize_reference",
]

tl = None  # triton.language, bound at the first kernel launch (Triton is imported lazily)

# dtype -> (explicit mantissa bits, smallest normal exponent): what grid rounding needs.
FP8_DTYPES = {torch.float8_e4m3fn: (3, -6), torch.float8_e5m2: (2, -14)}
_FP32_MAX = torch.finfo(torch.float32).max
_PER_TENSOR_BLOCK = 1024


def _check_fp8_dtype(fp8_dtype: torch.dtype) -> float:
    """Return the format's largest finite value; reject dtypes the kernels do not know."""
    if fp8_dtype not in FP8_DTYPES:
        raise ValueError(f"fp8_dtype must be one of {list(FP8_DTYPES)}, got {fp8_dtype}")
    return torch.finfo(fp8_dtype).max


def _scale_tensor(scale: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    """The scale as a 1-element fp32 tensor: a device tensor scale avoids a host sync."""
    return torch.as_tensor(scale, dtype=torch.float32, device=device).reshape(1)


def cast_to_fp8_reference(
    x: torch.Tensor, scale: float | torch.Tensor, fp8_dtype: torch.dtype = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (saturate(x * scale) as fp8, amax = max|x| as a 0-d fp32 tensor)."""
    fp8_max = _check_fp8_dtype(fp8_dtype)
    xf = x.float()
    amax = xf.abs().amax() if x.numel() else xf.new_zeros(())
    scaled = xf * _scale_tensor(scale, x.device).reshape(())
    return scaled.clamp(-fp8_max, fp8_max).to(fp8_dtype), amax


def cast_to_fp8_triton(
    x: torch.Tensor, scale: float | torch.Tensor, fp8_dtype: torch.dtype = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton per-tensor cast; same contract as :func:`cast_to_fp8_reference`."""
    fp8_max = _check_fp8_dtype(fp8_dtype)
    mant_bits, min_exp = FP8_DTYPES[fp8_dtype]
    flat = x.contiguous().view(-1)
    out = torch.empty(x.shape, dtype=fp8_dtype, device=x.device)
    amax = torch.zeros(1, dtype=torch.float32, device=x.device)
    if flat.numel():
        _scaled_cast_kernel[(cdiv(flat.numel(), _PER_TENSOR_BLOCK),)](
            flat, out, _scale_tensor(scale, x.device), amax, flat.numel(),
            FP8_MAX=fp8_max, MANT_BITS=mant_bits, MIN_EXP=min_exp, BLOCK=_PER_TENSOR_BLOCK,
        )
    return out, amax.reshape(())


def _check_blockwise(x: torch.Tensor, block: tuple[int, int]) -> None:
    """Blockwise casts take 2-D tensors and power-of-two blocks (Triton tile extents)."""
    if x.dim() != 2:
        raise ValueError(f"blockwise cast takes a 2-D tensor, got shape {tuple(x.shape)}")
    if len(block) != 2 or any(b < 1 or next_power_of_2(b) != b for b in block):
        raise ValueError(f"block must be two powers of two such as (1, 128), got {block}")


def blockwise_cast_to_fp8_reference(
    x: torch.Tensor, block: tuple[int, int] = (1, 128), fp8_dtype: torch.dtype = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x_fp8 [M, N], scales [ceil(M/bm), ceil(N/bn)] fp32) with x_fp8 ~= x * scale.

    scale = fp8_max / amax(block), capped at fp32 max; a block of zeros gets scale 1. Edge blocks
    cover only the valid part of the tensor (zero padding does not change an amax).
    """
    _check_blockwise(x, block)
    fp8_max = _check_fp8_dtype(fp8_dtype)
    (rows, cols), (bm, bn) = x.shape, block
    mb, nb = cdiv(rows, bm), cdiv(cols, bn)
    padded = F.pad(x.float(), (0, nb * bn - cols, 0, mb * bm - rows))
    tiles = padded.view(mb, bm, nb, bn)
    amax = tiles.abs().amax(dim=(1, 3))
    # An all-zero block divides fp8_max by itself: scale 1. Tensor / tensor on purpose: torch
    # computes scalar / tensor as reciprocal * scalar, which can differ by an ulp.
    safe_amax = torch.where(amax > 0, amax, torch.full_like(amax, fp8_max))
    scales = (torch.full_like(amax, fp8_max) / safe_amax).clamp(max=_FP32_MAX)
    scaled = (tiles * scales[:, None, :, None]).clamp(-fp8_max, fp8_max)
    x_fp8 = scaled.to(fp8_dtype).view(mb * bm, nb * bn)[:rows, :cols].contiguous()
    return x_fp8, scales


def blockwise_dequantize_reference(
    x_fp8: torch.Tensor,
    scales: torch.Tensor,
    block: tuple[int, int] = (1, 128),
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Invert :func:`blockwise_cast_to_fp8_reference` up to FP8 rounding: x_fp8 / scale."""
    rows, cols = x_fp8.shape
    expanded = scales.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    return (x_fp8.float() / expanded[:rows, :cols]).to(out_dtype)


def blockwise_cast_to_fp8_triton(
    x: torch.Tensor, block: tuple[int, int] = (1, 128), fp8_dtype: torch.dtype = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton blockwise cast, one program per block; same contract as the reference."""
    _check_blockwise(x, block)
    fp8_max = _check_fp8_dtype(fp8_dtype)
    mant_bits, min_exp = FP8_DTYPES[fp8_dtype]
    (rows, cols), (bm, bn) = x.shape, block
    x = x.contiguous()
    out = torch.empty(rows, cols, dtype=fp8_dtype, device=x.device)
    scales = torch.empty(cdiv(rows, bm), cdiv(cols, bn), dtype=torch.float32, device=x.device)
    if x.numel():
        _blockwise_cast_kernel[tuple(scales.shape)](
            x, out, scales, rows, cols, FP8_MAX=fp8_max, FP32_MAX=_FP32_MAX,
            MANT_BITS=mant_bits, MIN_EXP=min_exp, BLOCK_M=bm, BLOCK_N=bn,
            num_warps=num_warps_for(bm * bn),
        )
    return out, scales


@jit
def _round_to_fp8_grid(y, MANT_BITS: tl.constexpr, MIN_EXP: tl.constexpr):
    """Round fp32 ``y`` (already within +-fp8_max) to the nearest-even FP8 value, kept in fp32.

    The grid spacing is 2^(e - MANT_BITS) for exponent e, floored at the smallest normal exponent
    (subnormals share its spacing). Scaling by powers of two is exact and |y / spacing| stays
    below 2^(MANT_BITS + 1), so floor/compare below are exact too.
    """
    bits = y.to(tl.int32, bitcast=True)
    exp = tl.maximum(((bits >> 23) & 0xFF) - 127, MIN_EXP)
    spacing = ((exp - MANT_BITS + 127) << 23).to(tl.float32, bitcast=True)
    inv_spacing = ((MANT_BITS - exp + 127) << 23).to(tl.float32, bitcast=True)
    steps = tl.abs(y) * inv_spacing
    low = tl.floor(steps)
    frac = steps - low
    odd = (low.to(tl.int32) & 1) == 1
    rounded = (low + tl.where((frac > 0.5) | ((frac == 0.5) & odd), 1.0, 0.0)) * spacing
    return tl.where(bits < 0, -rounded, rounded)  # keeps the sign of zero, as torch does


@jit
def _scaled_cast_kernel(
    x_ptr, out_ptr, scale_ptr, amax_ptr, n,
    FP8_MAX: tl.constexpr, MANT_BITS: tl.constexpr, MIN_EXP: tl.constexpr, BLOCK: tl.constexpr,
):
    """Per-tensor cast of one BLOCK of elements; folds the block's max|x| into amax atomically."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.atomic_max(amax_ptr, tl.max(tl.abs(x), axis=0))
    scaled = tl.clamp(x * tl.load(scale_ptr), -FP8_MAX, FP8_MAX)
    y = _round_to_fp8_grid(scaled, MANT_BITS, MIN_EXP)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@jit
def _blockwise_cast_kernel(
    x_ptr, out_ptr, scale_ptr, rows, cols,
    FP8_MAX: tl.constexpr, FP32_MAX: tl.constexpr, MANT_BITS: tl.constexpr,
    MIN_EXP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Cast one [BLOCK_M, BLOCK_N] tile with its own scale; masks the ragged edge tiles."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    r = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    mask = (r < rows) & (c < cols)
    x = tl.load(x_ptr + r * cols + c, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.max(tl.abs(x), axis=1), axis=0)
    safe_amax = tl.where(amax > 0, amax, FP8_MAX)  # an all-zero block gets scale 1
    # div_rn: Triton's `/` on NVIDIA is the approximate div.full.f32; the reference is IEEE.
    scale = tl.minimum(tl.math.div_rn(tl.full([], FP8_MAX, tl.float32), safe_amax), FP32_MAX)
    y = _round_to_fp8_grid(tl.clamp(x * scale, -FP8_MAX, FP8_MAX), MANT_BITS, MIN_EXP)
    tl.store(out_ptr + r * cols + c, y.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + pid_m * tl.num_programs(1) + pid_n, scale)
