"""Lazy, optional Triton for the kernel modules.

Triton is optional (Linux only), and it fixes compiled-vs-interpreted mode (``TRITON_INTERPRET=1``)
when it is imported: its own ``tl.sum``/``tl.max`` are jitted at that moment. Importing it as a
side effect of ``import vlac.runtime.kernels`` would freeze compiled mode in every process that
imports this package before a test enables the interpreter. So nothing here imports Triton until
a kernel is first launched.

Kernel modules therefore (1) use ``from __future__ import annotations`` so ``tl.constexpr``
annotations stay strings, which Triton accepts; (2) decorate kernels with :func:`jit`, which
defers ``triton.jit`` to the first launch; and (3) declare ``tl = None``, which the first launch
rebinds to ``triton.language`` in that module.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from functools import cache
from typing import Any, Callable

__all__ = ["cdiv", "have_triton", "interpreter_active", "jit", "next_power_of_2", "num_warps_for"]


@cache
def have_triton() -> bool:
    """Whether the ``triton`` package is installed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_active() -> bool:
    """Whether kernels would run in Triton's CPU interpreter.

    True when ``TRITON_INTERPRET=1`` and Triton is either not imported yet or was imported with
    the variable set (otherwise its standard library is compiled and the interpreter cannot run).
    """
    if os.environ.get("TRITON_INTERPRET") != "1" or not have_triton():
        return False
    if "triton" not in sys.modules:
        return True
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.standard.sum, InterpretedFunction)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (at least 1): ``tl.arange`` extents must be powers of two."""
    return 1 << max(int(n) - 1, 0).bit_length()


def cdiv(a: int, b: int) -> int:
    """Ceiling division, for grid sizes."""
    return -(-a // b)


def num_warps_for(tile_elements: int) -> int:
    """Warps for a program holding ``tile_elements`` values: ~8 per thread, between 1 and 16
    warps, so large row/tile kernels do not spill registers (the interpreter ignores it)."""
    return min(max(next_power_of_2(tile_elements) // 256, 1), 16)


class _DeferredKernel:
    """A kernel (or device helper) whose ``triton.jit`` happens at the first launch."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __getitem__(self, grid: Any) -> Any:
        if not have_triton():
            raise RuntimeError("Triton is not installed; use backend='torch'")
        namespace = _materialize(self.fn.__globals__)
        return namespace[self.fn.__name__][grid]


def _materialize(namespace: dict[str, Any]) -> dict[str, Any]:
    """Import Triton, bind ``tl`` in a kernel module and jit all of its deferred kernels.

    The whole module is done at once so kernels that call ``@jit`` helpers find real Triton
    functions; later launches look the module globals up and skip this entirely.
    """
    triton = importlib.import_module("triton")
    namespace["tl"] = importlib.import_module("triton.language")
    for name, value in list(namespace.items()):
        if isinstance(value, _DeferredKernel):
            namespace[name] = triton.jit(value.fn)
    return namespace


def jit(fn: Callable[..., Any]) -> _DeferredKernel:
    """Mark ``fn`` as a Triton kernel or device helper, to be jitted at the first launch."""
    return _DeferredKernel(fn)
