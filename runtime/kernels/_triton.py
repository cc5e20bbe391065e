"""Optional Triton import and a deferred ``@jit`` shared by the kernel modules.

Triton is an optional dependency (Linux only), so the kernel modules must import without it:
they use ``from __future__ import annotations`` (so ``tl.constexpr`` annotations stay strings,
which Triton accepts) and decorate kernels with :func:`jit` from here.

``triton.jit`` decides between compiled and interpreted kernels (``TRITON_INTERPRET=1``) at the
moment it runs. Decorating at import would freeze that choice whenever anything imported this
package before a test set the variable, so :func:`jit` defers the real decoration to the first
launch of any kernel in the module.
"""

from __future__ import annotations

import os
from typing import Any, Callable

try:  # Triton is optional: every public function falls back to its PyTorch reference.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is not installed
    triton = None
    tl = None

__all__ = ["jit", "tl", "triton", "have_triton", "interpreter_enabled", "next_power_of_2"]


def have_triton() -> bool:
    """Whether the ``triton`` package imported."""
    return triton is not None


def interpreter_enabled() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (at least 1): ``tl.arange`` extents must be powers of two."""
    return 1 << max(int(n) - 1, 0).bit_length()


class _DeferredKernel:
    """A kernel function whose ``triton.jit`` happens at first launch (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __getitem__(self, grid: Any) -> Any:
        if triton is None:
            raise RuntimeError("Triton is not installed; use backend='torch'")
        namespace = _materialize(self.fn.__globals__)
        return namespace[self.fn.__name__][grid]


def _materialize(namespace: dict[str, Any]) -> dict[str, Any]:
    """Replace every deferred kernel in a module namespace by its ``triton.jit`` version.

    All of a module's kernels are jitted together so that kernels calling helper ``@jit``
    functions find real Triton functions when they are compiled or interpreted.
    """
    for name, value in list(namespace.items()):
        if isinstance(value, _DeferredKernel):
            namespace[name] = triton.jit(value.fn)
    return namespace


def jit(fn: Callable[..., Any]) -> _DeferredKernel:
    """Mark ``fn`` as a Triton kernel (or device helper) to be jitted at first launch."""
    return _DeferredKernel(fn)
