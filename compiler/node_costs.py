"""Cost rules for single FX nodes, applied while an Interpreter runs the graph on meta tensors.

Running the graph (instead of reading shapes off a ShapeProp pass) gives each rule the real
input and output tensors, including whether an input requires grad (which decides the backward
GEMMs) and the exact tensors autograd saves for backward (caught with saved_tensors_hooks and
charged to the node that produced them).
"""

from __future__ import annotations

import operator
from collections import defaultdict
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.graph import saved_tensors_hooks

from vlac.runtime.layers import RMSNorm

GEMM_FUNCS = {torch.bmm, torch.matmul, operator.matmul, F.linear, torch.mm, torch.einsum}
NORM_TYPES = (RMSNorm, nn.LayerNorm)


def _tensors(x: Any):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (tuple, list)):
        for v in x:
            yield from _tensors(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)


def storage_key(t: torch.Tensor) -> int:
    # the StorageImpl address: distinct per allocation even on meta, shared by views
    return t.untyped_storage()._cdata


class CostInterpreter(fx.Interpreter):
    """Runs a graph on meta tensors with autograd on, recording per node: its inputs' and
    output's tensors (for the cost rules) and the bytes saved for backward that it produced."""

    def __init__(self, gm: fx.GraphModule, skip_saving: tuple[type[nn.Module], ...] = ()):
        super().__init__(gm)
        self.param_keys = {storage_key(p) for p in gm.parameters()} | {storage_key(b) for b in gm.buffers()}
        self.producer: dict[int, str] = {}
        self.saved: dict[str, float] = defaultdict(float)
        self.saved_by_producer_kind: dict[str, float] = defaultdict(float)
        self._saved_keys: set[int] = set()
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.outputs: dict[str, Any] = {}
        self.call_args: dict[str, tuple] = {}  # arguments of the skipped (separately analysed) modules
        self.skip_saving = skip_saving
        self._current: str = ""
        self._recording = True

    def run_node(self, n: fx.Node) -> Any:
        self._current = n.name
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        self.inputs[n.name] = list(_tensors((args, kwargs)))
        skip = n.op == "call_module" and isinstance(self.module.get_submodule(n.target), self.skip_saving)
        if skip:
            self.call_args[n.name] = args
        self._recording = not skip
        with saved_tensors_hooks(self._pack, lambda t: t):
            out = super().run_node(n)
        self._recording = True
        self.outputs[n.name] = out
        for t in _tensors(out):
            self.producer.setdefault(storage_key(t), n.name)
        return out

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if not self._recording:
            return t
        key = storage_key(t)
        if key in self.param_keys or key in self._saved_keys:
            return t
        self._saved_keys.add(key)
        self.saved[self.producer.get(key, self._current)] += t.untyped_storage().nbytes()
        return t


def gemm_flops(n: fx.Node, module: nn.Module | None, ins: list[torch.Tensor], out: Any) -> tuple[float, tuple[int, int, int] | None]:
    """Forward FLOPs (2*M*N*K) and (M, N, K) of a GEMM-like node, else (0, None)."""
    if isinstance(module, nn.Linear):
        x = ins[0]
        k, nn_ = module.in_features, module.out_features
        m = x.numel() // k
        return 2.0 * m * nn_ * k, (m, nn_, k)
    if n.op == "call_function" and n.target is F.linear:
        x, w = ins[0], ins[1]
        m = x.numel() // x.shape[-1]
        return 2.0 * m * w.shape[0] * w.shape[1], (m, w.shape[0], w.shape[1])
    if n.op == "call_function" and n.target in (torch.bmm, torch.matmul, operator.matmul, torch.mm):
        a, b = ins[0], ins[1]
        o = out
        k = a.shape[-1]
        batch_mn = o.numel()
        mnk = (o.numel() // o.shape[-1], o.shape[-1], k)
        return 2.0 * batch_mn * k, mnk
    return 0.0, None


def attention_flops(n: fx.Node, ins: list[torch.Tensor]) -> float:
    """scaled_dot_product_attention: QK^T and PV, halved when causal (a fused causal kernel
    skips the masked half; an explicit mask is computed densely)."""
    q, k, v = ins[0], ins[1], ins[2]
    b_h = q.numel() // (q.shape[-2] * q.shape[-1])
    sq, sk, d, dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    flops = 2.0 * b_h * sq * sk * (d + dv)
    causal = n.kwargs.get("is_causal", False)
    return flops / 2 if causal else flops


def is_attention(n: fx.Node) -> bool:
    return n.op == "call_function" and n.target is F.scaled_dot_product_attention


def is_gemm(n: fx.Node, module: nn.Module | None) -> bool:
    return isinstance(module, nn.Linear) or (n.op == "call_function" and n.target in GEMM_FUNCS)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def multiple_of_16(*dims: int) -> bool:
    return all(d % 16 == 0 for d in dims)


__all__ = ["CostInterpreter", "gemm_flops", "attention_flops", "is_attention", "is_gemm", "storage_key",
           "multiple_of_16", "ceil_div"]
