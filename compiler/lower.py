"""Lowering: Experiment -> Graph, an FX graph on the meta device with a cost record per node.

The model is built by the runtime (`build_model(exp, "meta")`, see meta_build), wrapped in its
training objective and traced with each block (a module held in an nn.ModuleList: decoder layers,
encoder and resampler layers) as a leaf. Running the top-level graph on meta tensors analyses a
block the first time a (signature, input shapes) pair is called: trace it, run it, cost its
nodes. Every later call with the same pair is answered from that analysis without running
anything, so lowering time does not grow with depth beyond tracing the top-level graph.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch._dynamo  # noqa: F401  (see below)
import torch.fx as fx
import torch.nn as nn
from torch.utils._pytree import tree_map

from vlac.runtime.batch import example_batch
from vlac.runtime.recompute import iter_blocks
from vlac.spec import Experiment

from .annotate import Site, node_cost
from .graph import Graph, NodeCost
from .meta_build import build_on_meta
from .node_costs import CostInterpreter, storage_key, unique_bytes
from .tracing import Signatures, call_values, concrete_arguments, trace

# torch imports torch._dynamo lazily, on the first meta op whose kernel is a decomposition (about a
# second). Importing it with the compiler makes that one-time cost part of `import vlac`, so the
# first lowering costs what every later one does.
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
EDGE_LAYER_REASON = "first/last decoder layer kept in BF16 (precision.fp8.keep_first_last_bf16)"


def lower(exp: Experiment, micro_batch: int = 1, seq_len: int | None = None, dtype: str | None = None) -> Graph:
    """Trace the experiment's model + objective on meta and cost every node for one
    micro-batch of `micro_batch` sequences of `seq_len` tokens in `dtype` (default: the spec's)."""
    t0 = time.perf_counter()
    name = dtype or exp.precision.dtype
    if name not in DTYPES:
        raise ValueError(f"dtype: lowering supports {', '.join(DTYPES)}, not {name!r}; pass dtype= one of them")
    dt = DTYPES[name]
    s = exp.train.seq_len if seq_len is None else seq_len
    check_shape(exp, micro_batch, s)
    model, objective = build_on_meta(exp, dt)
    lowering = _Lowering(exp, micro_batch * s, decoder=[id(b) for b in model.layers])
    top = trace(objective)
    batch = example_batch(exp, micro_batch, s, device="meta", dtype=dt)
    nodes = lowering.top_level(top, objective, batch)

    params_total = sum(n.params for n in nodes)
    params_expert = sum(n.params_expert for n in nodes)
    active_frac = exp.moe.top_k / exp.moe.experts if exp.moe else 1.0
    g = Graph(exp.name, top, lowering.graphs, lowering.block_of_layer, nodes, micro_batch, s,
              torch.finfo(dt).bits // 8, params_total, params_expert,
              int(round(params_total - params_expert * (1 - active_frac))),
              boundary_bytes=lowering.boundary_bytes, block_paths=lowering.block_paths)
    g.lower_seconds = time.perf_counter() - t0
    return g


def check_shape(exp: Experiment, micro_batch: int, seq_len: int) -> None:
    """Refuse a micro-batch or sequence length the model cannot be traced at, naming the argument:
    torch would otherwise fail deep inside the trace (a negative or fractional size, a slice past
    the RoPE table of context_length positions)."""
    for name, value, unit in (("micro_batch", micro_batch, "sequences"), ("seq_len", seq_len, "tokens")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: {value!r} is not a positive number of {unit}; pass a whole number >= 1")
    limit = exp.backbone.context_length
    if seq_len > limit:
        raise ValueError(f"seq_len: {seq_len} exceeds backbone.context_length {limit}, the positions the model has; "
                         f"pass seq_len <= {limit}")
    mtp = exp.losses.mtp
    if mtp and mtp.depth + 1 >= seq_len:  # as the spec's rule: module k's first target is token k+1 ahead
        raise ValueError(f"seq_len: {seq_len} leaves losses.mtp's module {mtp.depth} no target (it predicts "
                         f"{mtp.depth + 1} tokens ahead); pass seq_len >= {mtp.depth + 2}")


@dataclass
class _Analysis:
    """One analysed block call: its graph, its node costs (names and paths relative to the
    block, layer 0), the meta outputs it produced, and its placeholders in call order."""

    label: str
    gm: fx.GraphModule
    costs: list[NodeCost]
    outputs: Any
    placeholders: list[str]


@dataclass
class _Call:
    analysis: _Analysis
    arg_keys: list[int | None]  # storage of each placeholder's value at this call


class _Lowering:
    def __init__(self, exp: Experiment, tokens: int, decoder: list[int]):
        self.exp, self.tokens = exp, tokens
        self.vocab = exp.vocab_layout().padded
        self.decoder = {block_id: i for i, block_id in enumerate(decoder)}
        self.signatures = Signatures()
        self.analysed: dict[tuple, _Analysis] = {}
        self.graphs: dict[str, fx.GraphModule] = {}
        self.block_of_layer: list[str] = [""] * len(decoder)
        self.boundary_bytes = 0.0
        self.external: frozenset[int] = frozenset()
        self.block_paths: dict[str, list[str]] = {}

    # ---- running graphs ----------------------------------------------------------------------
    def _run(self, gm: fx.GraphModule, root: nn.Module, args: list[Any]) -> tuple[CostInterpreter, dict[str, _Call]]:
        calls: dict[str, _Call] = {}

        def on_block(node: fx.Node, module: nn.Module, a: tuple, kw: dict) -> Any:
            values = call_values(module, a, kw)
            analysis, out = self._block(node, module, a, kw, values)
            calls[node.name] = _Call(analysis, [storage_key(v) if isinstance(v, torch.Tensor) else None for v in values])
            if id(module) in self.decoder and not self.boundary_bytes and isinstance(values[0], torch.Tensor):
                self.boundary_bytes = unique_bytes([values[0]])
            return out

        interp = CostInterpreter(gm, frozenset(id(m) for _, m in iter_blocks(root)), on_block, self.external)
        with torch.enable_grad():
            interp.run(*args)
        return interp, calls

    def _block(self, node: fx.Node, module: nn.Module, args: tuple, kwargs: dict, values: list[Any]) -> tuple[_Analysis, Any]:
        decoder = id(module) in self.decoder
        label = self.signatures.label(module)
        key = (label, decoder, tuple(_describe(v) for v in values))
        analysis = self.analysed.get(key)
        if analysis is not None:
            return analysis, tree_map(_fresh_like, analysis.outputs)
        try:
            gm = trace(module, concrete_arguments(module, args, kwargs) or None)
        except Exception as e:  # name the block: the tracer's own message rarely does
            raise RuntimeError(f"lowering: tracing the block {node.target} ({type(module).__name__}) failed: {e}") from e
        inputs = [v.detach().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) and v.is_floating_point()
                  else v for v in values]
        interp, calls = self._run(gm, module, inputs)
        site = Site(self.exp, self.tokens, self.vocab, in_block=True, decoder=decoder)
        stop, after_kernel = _recompute_stop(gm, interp)
        costs: list[NodeCost] = []
        seen_params: set[int] = set()
        held: set[int] = set()
        for i, n in enumerate(gm.graph.nodes):
            if n.name in calls:  # a block inside this block: its inputs are recomputed with it
                records = _expand(calls[n.name], str(n.target), 0, held, nested=True)
            else:
                c = node_cost(n, gm, interp, site, seen_params)
                records = [] if c is None else [c]
            rerun = i < stop or (i == stop and after_kernel)
            costs += records if rerun else [_relabel(c, recomputed=False) for c in records]
        placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        out = _graph_output(gm, interp)
        analysis = _Analysis(label, gm, costs, out, placeholders)
        self.analysed[key] = analysis
        self.graphs.setdefault(label, gm)
        return analysis, out

    # ---- the top level -----------------------------------------------------------------------
    def top_level(self, top: fx.GraphModule, objective: nn.Module, batch: dict) -> list[NodeCost]:
        self.external = frozenset(storage_key(t) for t in [*objective.parameters(), *objective.buffers(), *batch.values()])
        interp, calls = self._run(top, objective, [batch])
        n_layers = len(self.decoder)
        before = Site(self.exp, self.tokens, self.vocab)
        after = Site(self.exp, self.tokens, self.vocab, after_decoder=True)
        keep_edges = self.exp.precision.fp8.keep_first_last_bf16
        nodes: list[NodeCost] = []
        seen_params: set[int] = set()
        # a block input that a top-level op already saves (the decoder's output, which the final
        # norm keeps and the MTP modules take in) is one storage: charged there, not again when
        # a checkpointed block holds it
        held: set[int] = set(interp.saved_keys)
        layer = -1  # a node between decoder layers i-1 and i runs with (and is tagged as) layer i
        for n in top.graph.nodes:
            call = calls.get(n.name)
            if call is None:
                c = node_cost(n, top, interp, after if layer >= n_layers else before, seen_params)
                if c is not None:
                    nodes.append(_relabel(c, layer=layer))
                continue
            self.block_paths.setdefault(call.analysis.label, []).append(str(n.target))
            module = top.get_submodule(str(n.target))
            index = self.decoder.get(id(module))
            if index is None:
                nodes += _expand(call, str(n.target), layer, held)
                continue
            self.block_of_layer[index] = call.analysis.label
            edge = keep_edges and index in (0, n_layers - 1)
            nodes += _expand(call, str(n.target), index, held, bf16_edge=edge)
            layer = index + 1
        return nodes


def _expand(call: _Call, prefix: str, layer: int, held: set[int], nested: bool = False,
            bf16_edge: bool = False) -> list[NodeCost]:
    """The costs of one block call: the analysis's records under this call's path and layer.
    An input whose storage an earlier call already holds (a mask shared by every layer) is
    charged once; a nested block's inputs are not kept by the enclosing checkpoint."""
    a = call.analysis
    position = {name: i for i, name in enumerate(a.placeholders)}
    out = []
    for c in a.costs:
        changes: dict[str, Any] = {"name": f"{prefix}.{c.name}", "module": f"{prefix}.{c.module}".rstrip("."),
                                   "layer": layer}
        if c.kind == "input" and c.name in position:
            key = call.arg_keys[position[c.name]]
            if key is not None and key in held:
                changes["saved"] = {p: 0.0 for p in c.saved}
            elif nested:
                changes["saved"] = {"none": c.saved["none"], "selective": 0.0, "full": 0.0}
            if key is not None:
                held.add(key)
        if bf16_edge and c.fp8_eligible:
            changes["fp8_eligible"] = False
            changes["fp8_reason"] = EDGE_LAYER_REASON
        out.append(_relabel(c, **changes))
    return out


def _recompute_stop(gm: fx.GraphModule, interp: CostInterpreter) -> tuple[int, bool]:
    """Where full recompute of this block stops: the index of the node that packed the block's
    last saved tensor, and whether it packed an output (its kernel then reruns; an op packs its
    inputs before its kernel). Nodes after it are not recomputed (checkpoint's early stop)."""
    if interp.last_pack is None:
        return -1, False
    last, after_kernel = interp.last_pack
    index = next(i for i, n in enumerate(gm.graph.nodes) if n.name == last)
    return index, after_kernel


def _relabel(c: NodeCost, **changes: Any) -> NodeCost:
    # dataclasses.replace re-runs __init__; a shallow copy is ~5x faster over thousands of records
    new = copy.copy(c)
    for k, v in changes.items():
        object.__setattr__(new, k, v)
    return new


def _graph_output(gm: fx.GraphModule, interp: CostInterpreter) -> Any:
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    return tree_map(lambda a: interp.outputs[a.name] if isinstance(a, fx.Node) else a, out_node.args[0],
                    is_leaf=lambda a: isinstance(a, fx.Node))


def _describe(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return ("tensor", tuple(v.shape), v.dtype, v.requires_grad)
    return ("value", repr(v))


def _fresh_like(v: Any) -> Any:
    if not isinstance(v, torch.Tensor):
        return v
    t = torch.empty_like(v, device="meta")
    return t.requires_grad_(v.requires_grad) if v.is_floating_point() else t


__all__ = ["DTYPES", "EDGE_LAYER_REASON", "lower"]
