"""Hot-path kernels with a backend switch: Triton on CUDA tensors, the PyTorch reference elsewhere.

Every public function takes ``backend="auto" | "torch" | "triton"``:

* ``"auto"`` uses Triton for CUDA tensors when Triton is installed and the reference otherwise.
  It does not pick Triton for CPU tensors even under ``TRITON_INTERPRET=1``: the interpreter is a
  correctness tool, orders of magnitude slower than the reference, and a test process that sets
  the variable must not slow down every other caller.
* ``"triton"`` forces the kernel; it needs :func:`triton_available` (CUDA tensor, or CPU tensor
  with ``TRITON_INTERPRET=1``), which is how the tests run kernels on CPU.
* ``"torch"`` forces the reference.

:func:`select_backend` reports the ``"auto"`` choice per kernel for a device type, so a compiled
plan can record which implementation the training program will use.
"""

from __future__ import annotations

import torch

from . import fp8_cast as _fp8
from . import moe_permute as _moe
from . import rmsnorm as _rmsnorm
from . import rope as _rope
from ._triton import have_triton, interpreter_active
from .fp8_cast import blockwise_dequantize_reference as fp8_blockwise_dequantize
from .moe_permute import PermuteMeta, permuted_rows_bound

__all__ = [
    "BACKENDS",
    "KERNELS",
    "PermuteMeta",
    "apply_rope",
    "fp8_blockwise_cast",
    "fp8_blockwise_dequantize",
    "fp8_cast",
    "moe_permute",
    "moe_unpermute",
    "permuted_rows_bound",
    "rms_norm",
    "select_backend",
    "triton_available",
]

BACKENDS = ("auto", "torch", "triton")
KERNELS = ("moe_permute", "moe_unpermute", "fp8_cast", "fp8_blockwise_cast", "rms_norm", "apply_rope")


def triton_available(x: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on ``x``: Triton is installed and x is on CUDA or the
    CPU interpreter is enabled (``TRITON_INTERPRET=1`` set before Triton was first imported)."""
    return have_triton() and (x.is_cuda or interpreter_active())


def select_backend(device_type: str) -> dict[str, str]:
    """The ``"auto"`` backend of every kernel for tensors on ``device_type`` ("cuda", "cpu", ...)."""
    choice = "triton" if device_type == "cuda" and have_triton() else "torch"
    return {name: choice for name in KERNELS}


def _use_triton(backend: str, x: torch.Tensor) -> bool:
    """Resolve ``backend`` for tensor ``x``; reject unknown names and impossible requests."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    if backend == "triton" and not triton_available(x):
        raise RuntimeError(
            "backend='triton' needs Triton installed and a CUDA tensor, or TRITON_INTERPRET=1 set "
            f"before Triton is first imported; got a {x.device.type} tensor"
        )
    if backend == "auto":
        return x.is_cuda and have_triton()
    return backend == "triton"


def moe_permute(
    x: torch.Tensor,
    expert_idx: torch.Tensor,
    num_experts: int,
    align: int = 16,
    out_rows: int | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, PermuteMeta, torch.Tensor, torch.Tensor]:
    """Group token copies by expert: (x_perm, meta, tokens_per_expert, padded_offsets).

    See :mod:`vlac.runtime.kernels.moe_permute`; R = rows of x_perm depends on the routing
    unless ``out_rows`` (>= :func:`permuted_rows_bound`) fixes it.
    """
    impl = _moe.permute_triton if _use_triton(backend, x) else _moe.permute_reference
    return impl(x, expert_idx, num_experts, align, out_rows)


def moe_unpermute(
    y_perm: torch.Tensor, meta: PermuteMeta, router_weights: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """y[t] = sum_j router_weights[t, j] * y_perm[meta.row_map[t, j]]."""
    impl = _moe.unpermute_triton if _use_triton(backend, y_perm) else _moe.unpermute_reference
    return impl(y_perm, meta, router_weights)


def fp8_cast(
    x: torch.Tensor,
    scale: float | torch.Tensor,
    fp8_dtype: torch.dtype = torch.float8_e4m3fn,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaled saturating cast: (fp8(clamp(x * scale)), amax = max|x| in fp32)."""
    impl = _fp8.cast_to_fp8_triton if _use_triton(backend, x) else _fp8.cast_to_fp8_reference
    return impl(x, scale, fp8_dtype)


def fp8_blockwise_cast(
    x: torch.Tensor,
    block: tuple[int, int] = (1, 128),
    fp8_dtype: torch.dtype = torch.float8_e4m3fn,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise cast of a 2-D tensor: (x_fp8, scales) with scale = fp8_max / amax per block."""
    use = _use_triton(backend, x)
    impl = _fp8.blockwise_cast_to_fp8_triton if use else _fp8.blockwise_cast_to_fp8_reference
    return impl(x, block, fp8_dtype)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, backend: str = "auto"
) -> torch.Tensor:
    """RMSNorm over the last dim in fp32, output in x's dtype; differentiable."""
    impl = _rmsnorm.rms_norm_triton if _use_triton(backend, x) else _rmsnorm.rms_norm_reference
    return impl(x, weight, eps)


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Rotate-half RoPE for x [B, S, heads, D] with cos/sin [S, D]; differentiable in x."""
    impl = _rope.apply_rope_triton if _use_triton(backend, x) else _rope.apply_rope_reference
    return impl(x, cos, sin)
