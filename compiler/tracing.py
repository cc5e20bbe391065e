"""The FX tracer, its explicit leaf policy, block signatures, and the one graph rewrite.

Leaves are the modules whose cost is one well-known op (linear, embedding, norm, dropout,
activation): keeping them whole makes each a single node that the cost rules recognise.
Blocks (modules held in an nn.ModuleList, see `vlac.runtime.recompute.iter_blocks`) are leaves
of the trace that contains them and are traced on their own, once per distinct signature and
input shapes, so a 100-layer model costs as much to analyse as a 2-layer one.
"""

from __future__ import annotations

import dis
import inspect
import math
from bisect import bisect_left
from typing import Any, Hashable, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from vlac.runtime.layers import RMSNorm
from vlac.runtime.recompute import iter_blocks

LEAF_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Embedding, nn.LayerNorm, RMSNorm, nn.Dropout, nn.GELU, nn.SiLU, nn.Identity,
)
# instance attributes that differ between otherwise identical layers without changing their graph
_POSITIONAL_ATTRS = frozenset({"index", "training"})


class VlacTracer(fx.Tracer):
    """Leaves: LEAF_TYPES and the given block modules (by identity)."""

    def __init__(self, blocks: frozenset[int]):
        super().__init__()
        self.blocks = blocks

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAF_TYPES) or id(m) in self.blocks

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _UnpackingProxy(node, self)


_UNPACK_COUNTS: dict[tuple[Any, int], int | None] = {}


class _UnpackingProxy(fx.Proxy):
    """fx.Proxy whose tuple unpacking (`x, aux, load, dropped = block(...)`) reads the caller's
    bytecode once per call site instead of disassembling the whole function on every call:
    for a 100-layer loop that was the largest part of tracing."""

    def __iter__(self) -> Iterator[fx.Proxy]:
        caller = inspect.currentframe().f_back
        site = (caller.f_code, caller.f_lasti)
        if site not in _UNPACK_COUNTS:
            instructions = list(dis.get_instructions(caller.f_code))
            inst = instructions[bisect_left(instructions, caller.f_lasti, key=lambda i: i.offset)]
            _UNPACK_COUNTS[site] = inst.argval if inst.opname == "UNPACK_SEQUENCE" else None
        count = _UNPACK_COUNTS[site]
        if count is None:
            return self.tracer.iter(self)
        return (self[i] for i in range(count))


def trace(root: nn.Module, concrete_args: dict[str, Any] | None = None) -> fx.GraphModule:
    """Trace `root` with its blocks (and nested ones) as leaves; `concrete_args` fixes
    arguments that are None or plain Python values at the call being analysed, so branches on
    them (`mask is None`, `cache is not None`) resolve as they do at run time."""
    blocks = frozenset(id(m) for _, m in iter_blocks(root))
    tracer = VlacTracer(blocks)
    graph = tracer.trace(root, concrete_args=concrete_args)
    gm = fx.GraphModule(tracer.root, graph, root.__class__.__name__)
    make_attention_bias_explicit(gm)
    return gm


def concrete_arguments(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Names of `module.forward`'s parameters whose value at this call is not a tensor."""
    signature = inspect.signature(module.forward)
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {k: v for k, v in bound.arguments.items()
            if not isinstance(v, torch.Tensor) and signature.parameters[k].kind not in variadic}


def call_values(module: nn.Module, args: tuple, kwargs: dict) -> list[Any]:
    """The call's arguments in the order of the traced graph's placeholders."""
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return list(bound.arguments.values())


# ---- block signatures ------------------------------------------------------------------------

def _simple(value: Any) -> bool:
    if isinstance(value, (torch.Tensor, nn.Module)) or callable(value):
        return False
    try:
        hash(value)
    except TypeError:
        return False
    return True


def structure_key(module: nn.Module) -> Hashable:
    """Everything that decides a block's graph and costs: per submodule its type, its hashable
    configuration attributes (not its layer index), parameter and buffer shapes and dtypes."""
    items = []
    for name, sub in module.named_modules():
        attrs = tuple(sorted((k, v) for k, v in vars(sub).items()
                             if not k.startswith("_") and k not in _POSITIONAL_ATTRS and _simple(v)))
        params = tuple((n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in sub.named_parameters(recurse=False))
        buffers = tuple((n, tuple(b.shape), b.dtype) for n, b in sub.named_buffers(recurse=False))
        items.append((name, type(sub).__qualname__, attrs, params, buffers))
    return tuple(items)


def block_label(module: nn.Module) -> str:
    """A short readable name: `moe`/`dense` for decoder blocks (`+window` for a sliding-window
    layer, `+chunk` for a chunked one, as compiler/layer_roles.py names its kinds), else the class name."""
    if hasattr(module, "is_moe"):
        attn = getattr(module, "attn", None)
        window = "+window" if getattr(attn, "window", 0) else ""
        chunk = "+chunk" if getattr(attn, "chunk", 0) else ""
        return ("moe" if module.is_moe else "dense") + window + chunk
    return type(module).__name__.lower()


class Signatures:
    """Readable, unique labels for structurally distinct blocks (`dense`, `moe`, `dense#2`)."""

    def __init__(self):
        self._by_key: dict[Hashable, str] = {}
        self._used: set[str] = set()

    def label(self, module: nn.Module) -> str:
        key = structure_key(module)
        if key not in self._by_key:
            base = label = block_label(module)
            n = 2
            while label in self._used:
                label, n = f"{base}#{n}", n + 1
            self._by_key[key] = label
            self._used.add(label)
        return self._by_key[key]


# ---- the attention-bias rewrite --------------------------------------------------------------

def attention_bias(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """What scaled_dot_product_attention does to a boolean mask before a fused kernel: a new
    additive bias in the query's dtype (0 where allowed, -inf elsewhere), made on every call."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros_like(mask, dtype=like.dtype).masked_fill_(mask.logical_not(), -math.inf)


def make_attention_bias_explicit(gm: fx.GraphModule) -> None:
    """Give each masked SDPA call the mask-to-bias conversion its fused kernel performs as a
    node of its own: the bias is saved for backward per call, and unlike the attention core it
    is not split across tensor-parallel heads, so it needs its own cost record."""
    graph = gm.graph
    for n in list(graph.nodes):
        if not (n.op == "call_function" and n.target is F.scaled_dot_product_attention):
            continue
        args, kwargs = list(n.args), dict(n.kwargs)
        in_kwargs = "attn_mask" in kwargs
        mask = kwargs.get("attn_mask") if in_kwargs else (args[3] if len(args) > 3 else None)
        if not isinstance(mask, fx.Node):
            continue
        with graph.inserting_before(n):
            bias = graph.create_node("call_function", attention_bias, (mask, args[0]), name=f"{n.name}_mask_bias")
        bias.meta = dict(n.meta)
        if in_kwargs:
            kwargs["attn_mask"] = bias
        else:
            args[3] = bias
        n.args, n.kwargs = tuple(args), kwargs
    graph.lint()
    gm.recompile()


__all__ = ["LEAF_TYPES", "Signatures", "VlacTracer", "attention_bias", "block_label", "call_values",
           "concrete_arguments", "make_attention_bias_explicit", "structure_key", "trace"]
