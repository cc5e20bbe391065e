"""Running a traced graph on meta tensors and the FLOP rules for single nodes.

Running the graph (instead of reading shapes off a ShapeProp pass) gives each rule the real
input and output tensors, including whether an input requires grad (which decides the backward
GEMMs) and the exact tensors autograd saves for backward (caught with saved_tensors_hooks and
charged to the node that produced them).

Two ops run as the runtime's kernels do, not as the meta device would run them (fused_ops):
attention through the fused FlashAttention op, and dropless experts with their real buffers.
"""

from __future__ import annotations

import operator
import re
from collections import defaultdict
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.graph import saved_tensors_hooks

from vlac.runtime.layers import RMSNorm
from vlac.runtime.masks import sliding_window_mask

from .attention_pairs import chunk_of, chunk_pairs, sink_of
from .fused_ops import DROPLESS_EXPERTS, DROPLESS_FLOPS, dropless_on_meta, dropless_rows, fused_attention
from .tracing import attention_bias

GEMM_FUNCS = {torch.bmm, torch.matmul, operator.matmul, F.linear, torch.mm, torch.einsum}
NORM_TYPES = (RMSNorm, nn.LayerNorm)
NORM_FUNCS = {F.layer_norm, getattr(F, "rms_norm", F.layer_norm)}
LOSS_FUNCS = {F.cross_entropy, F.mse_loss, F.l1_loss, F.binary_cross_entropy_with_logits, F.nll_loss}
def tensors(x: Any):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (tuple, list)):
        for v in x:
            yield from tensors(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from tensors(v)


def storage_key(t: torch.Tensor) -> int:
    # the StorageImpl address: distinct per allocation even on meta, shared by views
    return t.untyped_storage()._cdata


def unique_bytes(ts, exclude: set[int] = frozenset()) -> float:
    """Bytes of the distinct storages behind `ts` (views counted once), skipping `exclude`."""
    seen, total = set(exclude), 0
    for t in ts:
        key = storage_key(t)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return float(total)


class CostInterpreter(fx.Interpreter):
    """Runs a graph on meta tensors with autograd on, recording per node its input and output
    tensors, the bytes of the GEMM/attention results selective recompute would keep (`kept_bytes`:
    the node's outputs, the fused attention's log-sum-exp too, a composite node's inner GEMMs) and
    the bytes saved for backward that it produced (`saved`). Storages in `external` (parameters
    and the batch, which live regardless of autograd) are never counted.

    `on_block(node, module, args, kwargs)` replaces the call of every module in `blocks` (ids):
    the lowering analyses a block once and answers repeated calls from that analysis."""

    def __init__(self, gm: fx.GraphModule, blocks: frozenset[int] = frozenset(),
                 on_block: Callable[[fx.Node, nn.Module, tuple, dict], Any] | None = None,
                 external: frozenset[int] = frozenset()):
        super().__init__(gm)
        # storages that exist whatever autograd keeps: parameters, buffers, the model's inputs
        self.param_keys = {storage_key(p) for p in gm.parameters()} | {storage_key(b) for b in gm.buffers()} | external
        self.blocks, self.on_block = blocks, on_block
        self.producer: dict[int, str] = {}
        self.block_calls: set[str] = set()
        self.saved: dict[str, float] = defaultdict(float)
        self.saved_keys: set[int] = set()  # storages some node of this graph saved for backward
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.outputs: dict[str, Any] = {}
        self.kept_bytes: dict[str, float] = {}
        self._kept: list[torch.Tensor] | None = None  # set by ops whose kept results are not their outputs
        self._current: str = ""
        self._node: fx.Node | None = None
        # (node, whether it packed an output): torch.utils.checkpoint stops recomputing a block
        # once the last tensor saved in the forward is saved again (early stop), and an op packs
        # its inputs before its kernel runs, its outputs after
        self.last_pack: tuple[str, bool] | None = None

    def run_node(self, n: fx.Node) -> Any:
        self._current, self._node = n.name, n
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        self.inputs[n.name] = list(tensors((args, kwargs)))
        self._kept = None
        with saved_tensors_hooks(self._pack, _unpack):
            out = super().run_node(n)
        self.outputs[n.name] = out
        produced = list(tensors(out))
        kept = produced if self._kept is None else self._kept
        inputs = {storage_key(t) for t in self.inputs[n.name]}
        self.kept_bytes[n.name] = unique_bytes([t for t in kept if storage_key(t) not in inputs], self.param_keys)
        for t in produced:
            self.producer.setdefault(storage_key(t), n.name)
        return out

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        if self.on_block is not None and id(module) in self.blocks:
            self.block_calls.add(self._current)
            out = self.on_block(self._node, module, args, kwargs)
            if any(t.requires_grad for t in tensors(out)):  # a nested block keeps tensors too
                self.last_pack = (self._current, True)
            return out
        return super().call_module(target, args, kwargs)

    def call_function(self, target, args, kwargs):
        if target is F.scaled_dot_product_attention:
            out, lse = fused_attention(*args, **kwargs)
            self._kept = [out, lse]
            return out
        if DROPLESS_EXPERTS is not None and target is DROPLESS_EXPERTS:
            self._kept = []
            return dropless_on_meta(*args, **kwargs, gemm_outputs=self._kept)
        return super().call_function(target, args, kwargs)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        is_input = key in self.param_keys or any(storage_key(i) == key for i in self.inputs[self._current])
        self.last_pack = (self._current, not is_input)
        if key in self.param_keys or key in self.saved_keys:
            return t
        self.saved_keys.add(key)
        producer = self.producer.get(key)
        # a block's outputs are charged to the node that saves them: the block's own records
        # are per layer and cannot hold what its consumers keep
        owner = producer if producer is not None and producer not in self.block_calls else self._current
        self.saved[owner] += t.untyped_storage().nbytes()
        return t


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


# ---- FLOP rules ------------------------------------------------------------------------------

def gemm_flops(n: fx.Node, module: nn.Module | None, ins: list[torch.Tensor], out: Any) -> tuple[float, tuple[int, int, int] | None]:
    """Forward FLOPs (2*M*N*K) and (M, N, K) of a GEMM-like node, else (0, None)."""
    if isinstance(module, nn.Linear):
        x = ins[0]
        k, nn_ = module.in_features, module.out_features
        m = x.numel() // k
        return 2.0 * m * nn_ * k, (m, nn_, k)
    if n.op != "call_function":
        return 0.0, None
    if n.target is F.linear:
        x, w = ins[0], ins[1]
        m = x.numel() // x.shape[-1]
        return 2.0 * m * w.shape[0] * w.shape[1], (m, w.shape[0], w.shape[1])
    if n.target in (torch.bmm, torch.matmul, operator.matmul, torch.mm):
        k = ins[0].shape[-1]
        return 2.0 * out.numel() * k, (out.numel() // out.shape[-1], out.shape[-1], k)
    if n.target is torch.einsum:
        return einsum_flops(n.args[0], ins), None
    if DROPLESS_EXPERTS is not None and n.target is DROPLESS_EXPERTS:
        # dropless_experts(h [T,d], idx [T,k], weights [T,k], w1 [E,d,f], w3 | None, w2, ...)
        h, idx, w1 = ins[0], ins[1], ins[3]
        swiglu = n.args[4] is not None
        d, f = w1.shape[1], w1.shape[2]
        fwd = float(DROPLESS_FLOPS(h.shape[0], idx.shape[-1], d, f, swiglu))
        return fwd, (dropless_rows(h.shape[0], idx.shape[-1], w1.shape[0]), f, d)
    return 0.0, None


def einsum_flops(equation: str, operands: list[torch.Tensor]) -> float:
    """2 x the product of every index size: multiply-adds of a contraction of two operands."""
    lhs = equation.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for spec, t in zip(lhs, operands):
        for letter, size in zip(re.sub(r"\.\.\.", "", spec), t.shape[-len(re.sub(r"\.\.\.", "", spec)):]):
            sizes[letter] = size
    total = 2.0
    for size in sizes.values():
        total *= size
    return total


def attention_flops(n: fx.Node, ins: list[torch.Tensor]) -> tuple[float, bool, float]:
    """scaled_dot_product_attention forward FLOPs (QK^T and PV), whether it is causal, and the
    share of the dense Sq x Sk scores they count: halved when causal (a fused causal kernel skips
    the masked half); a sliding window counts only its (query, key) pairs (`window_pairs`: a
    window-aware kernel, FlashAttention's window_size, skips the rest), a chunked layer those
    inside its chunks (attention_pairs.chunk_pairs), attention sinks one more pair per query on
    top of the layer's own (the sink's key column; the explicit mask that comes with the sinks does not
    make the kernel dense); any other explicit mask is computed densely."""
    q, k, v = ins[0], ins[1], ins[2]
    b_h = q.numel() // (q.shape[-2] * q.shape[-1])
    sq, sk, d, dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    flops = 2.0 * b_h * sq * sk * (d + dv)
    mask = _mask_argument(n)
    causal = bool(n.kwargs.get("is_causal", n.args[5] if len(n.args) > 5 else False))
    sink = sink_of(mask)
    if sink is not None:  # keys: the layer's sk - 1 and the sink's; q, k and v: one more dimension, the sink's
        pairs = _score_pairs(sink.args[0], sq, sk - 1, bool(sink.args[3])) + sq
        return 2.0 * b_h * pairs * (d - 1 + dv - 1), False, pairs / (sq * sk)
    if mask is None:
        return (flops / 2 if causal else flops), causal, (0.5 if causal else 1.0)
    share = _score_pairs(mask, sq, sk, causal) / (sq * sk)
    return flops * share, False, share


def _mask_argument(n: fx.Node):
    """The mask an attention node was given, behind the bias the tracer makes explicit."""
    mask = n.kwargs.get("attn_mask", n.args[3] if len(n.args) > 3 else None)
    if isinstance(mask, fx.Node) and mask.target is attention_bias:
        mask = mask.args[0]
    return mask


def _score_pairs(mask, sq: int, sk: int, causal: bool) -> float:
    """(query, key) pairs a kernel computes under `mask` (None: causal or full as `causal` says)."""
    window, chunk = _window_of_mask(mask), chunk_of(mask)
    if window is not None:
        return window_pairs(sq, sk, *window)
    if chunk is not None:
        return chunk_pairs(sq, sk, *chunk)
    return sq * sk / 2 if mask is None and causal else sq * sk


def sliding_window_of(n: fx.Node) -> tuple[int, bool] | None:
    """(window, causal) of an attention node whose mask comes from runtime.masks.sliding_window_mask
    (through the bias the tracer makes explicit), causal when that layer's own mask was None;
    None for any other attention."""
    return _window_of_mask(_mask_argument(n))


def _window_of_mask(mask) -> tuple[int, bool] | None:
    if not (isinstance(mask, fx.Node) and mask.op == "call_function" and mask.target is sliding_window_mask):
        return None
    return int(mask.args[3]), mask.args[0] is None


def window_pairs(sq: int, sk: int, window: int, causal: bool) -> int:
    """(query, key) pairs a sliding window of `window` keeps when the Sq queries are the last of
    the Sk key positions: a causal query at position p sees min(p + 1, window) keys (for Sq = Sk
    = S >= window the sum is window*S - window*(window-1)/2); under an explicit mask the band
    reaches window - 1 positions either way, and the mask's own zeros inside it are computed."""
    def upto(n: int) -> int:  # sum of min(p + 1, window) over p < n
        return n * (n + 1) // 2 if n <= window else window * (window + 1) // 2 + (n - window) * window

    first = sk - sq
    if causal:
        return upto(sk) - upto(first)
    below = lambda n: upto(n) - n  # noqa: E731 -- sum of min(p, window - 1) over p < n
    return below(sk) - below(first) + below(sk - first) + sq


def is_attention(n: fx.Node) -> bool:
    return n.op == "call_function" and n.target is F.scaled_dot_product_attention


def is_gemm(n: fx.Node, module: nn.Module | None) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return n.op == "call_function" and (n.target in GEMM_FUNCS or
                                        (DROPLESS_EXPERTS is not None and n.target is DROPLESS_EXPERTS))


def is_norm(n: fx.Node, module: nn.Module | None) -> bool:
    if isinstance(module, NORM_TYPES):
        return True
    name = getattr(n.target, "__name__", "") if n.op == "call_function" else ""
    return n.op == "call_function" and (n.target in NORM_FUNCS or name in ("rms_norm", "layer_norm"))


def is_loss(n: fx.Node) -> bool:
    return n.op == "call_function" and n.target in LOSS_FUNCS


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def multiple_of_16(*dims: int) -> bool:
    return all(d % 16 == 0 for d in dims)


__all__ = ["CostInterpreter", "attention_flops", "ceil_div", "einsum_flops", "gemm_flops",
           "is_attention", "is_gemm", "is_loss", "is_norm", "multiple_of_16", "sliding_window_of", "storage_key",
           "tensors", "unique_bytes", "window_pairs"]
