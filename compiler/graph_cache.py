"""Lower each distinct model once; derive the graphs of its deeper or shallower siblings.

An architecture search plans hundreds of experiments that share most of their structure. This
cache groups them into *families* that differ only in

- fields lowering never reads (cluster, parallelism, optimiser, token budget, ...): such
  experiments share one graph;
- depth (`backbone.layers`), which layers are MoE (`moe.layers`) and the FP8 first/last-layer
  policy: their graphs are assembled from a *reference*, the same model lowered at the smallest
  depth that shows every kind of layer the target needs, with the FP8 edge policy off so each
  block keeps its own FP8 eligibility.

Assembling works on the per-layer groups of a lowered graph (nodes carry layer tags: -1 before
the decoder, 0..L-1 the decoder layers, L the head and loss). A decoder layer's group depends on
its *role*: its own kind (dense or MoE) and the kind of the layer before it (None for the first),
because the top-level code between two layers (accumulating MoE losses, say) is charged to the
layer after it and an input shared by every layer (the attention mask) is charged to the first
one. A target layer copies the group of a reference layer with the same role, with `layers.N`
in its names and module paths moved to the new index; the head group is copied when the last
layer's kind matches; the FP8 edge policy is then applied per layer as `compiler/lower.py` does.
Group order is the reference's, so a derived node list equals a direct lowering's element by
element and every float sum over it is bit-identical (tests/compiler/test_graph_cache.py checks
the costs per layer, the FP8 decisions and the plans).

What cannot be derived is lowered directly, never guessed: late fusion (cross-attention layers
sit between decoder layers every k layers, so depth changes more than the blocks), or a reference
whose layers of one role differ or do not follow the layout described above.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from vlac.spec import Experiment

from .graph import RECOMPUTE, Graph, NodeCost
from .lower import lower

# Fields no part of lowering reads: experiments differing only here share one graph.
PLAN_ONLY_FIELDS = (
    "name", "description", "profiles", "cluster", "launcher", "parallelism", "optimizer",
    "train.total_tokens", "train.steps", "train.global_batch_tokens", "train.seed",
    "train.checkpoint_every", "train.keep_last", "train.log_every",
)
# Fields that decide which block sits where, re-applied per layer when deriving.
PER_LAYER_FIELDS = ("backbone.layers", "moe.layers", "backbone.sliding_window_layers",
                    "precision.fp8.keep_first_last_bf16")
# compiler/lower.py's reason for an eligible GEMM kept out of FP8 on the first/last layer
EDGE_LAYER_REASON = "first/last decoder layer kept in BF16 (precision.fp8.keep_first_last_bf16)"
_LAYER_INDEX = re.compile(r"(?:(?<=\.)|^)layers\.(\d+)(?=\.|$)")

Role = tuple  # (kind of the previous layer or None, kind of this layer)


def layer_kinds(exp: Experiment) -> tuple[str, ...]:
    """What each decoder layer is, read from the spec the way runtime/model.py builds it: dense or
    MoE, and "+window" for a sliding-window layer (its attention costs its window's pairs)."""
    moe = set(exp.moe.moe_layer_indices(exp.backbone.layers)) if exp.moe else set()
    window = set(exp.backbone.window_layers())
    return tuple(("moe" if i in moe else "dense") + ("+window" if i in window else "")
                 for i in range(exp.backbone.layers))


def _roles(kinds: tuple[str, ...]) -> list[Role]:
    return [(kinds[i - 1] if i else None, k) for i, k in enumerate(kinds)]


def _without(data: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    for path in paths:
        *parents, leaf = path.split(".")
        node: Any = data
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return data


def _key(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@dataclass
class _Template:
    """The nodes of one layer group, each name and module path split around its layer indices:
    (cost, name parts, module parts, index offsets relative to the group's layer)."""

    nodes: list[tuple[NodeCost, list[str], list[str], list[int], list[int]]]
    params: int = 0
    params_expert: int = 0

    @classmethod
    def of(cls, nodes: list[NodeCost], layer: int) -> _Template:
        out = []
        for n in nodes:
            name_parts, name_offsets = _split(n.name, layer)
            module_parts, module_offsets = _split(n.module, layer)
            out.append((n, name_parts, module_parts, name_offsets, module_offsets))
        return cls(out, sum(n.params for n in nodes), sum(n.params_expert for n in nodes))

    def costs(self) -> list[tuple]:
        """What must agree between two layers of one role: everything but names and tags."""
        return [tuple(v for k, v in vars(n).items() if k not in ("name", "module", "layer"))
                for n, *_ in self.nodes]

    def at(self, layer: int, edge: bool) -> list[NodeCost]:
        out = []
        for c, name_parts, module_parts, name_offsets, module_offsets in self.nodes:
            changes: dict[str, Any] = {"layer": layer}
            if name_offsets:
                changes["name"] = _join(name_parts, name_offsets, layer)
            if module_offsets:
                changes["module"] = _join(module_parts, module_offsets, layer)
            if edge and c.fp8_eligible:
                changes["fp8_eligible"], changes["fp8_reason"] = False, EDGE_LAYER_REASON
            out.append(_copy(c, changes))
        return out


def _split(text: str, layer: int) -> tuple[list[str], list[int]]:
    parts, offsets, pos = [], [], 0
    for m in _LAYER_INDEX.finditer(text):
        parts.append(text[pos:m.start(1)])
        offsets.append(int(m.group(1)) - layer)
        pos = m.end(1)
    parts.append(text[pos:])
    return parts, offsets


def _join(parts: list[str], offsets: list[int], layer: int) -> str:
    if len(offsets) == 1:  # the usual case: one `layers.N` in the path
        return f"{parts[0]}{layer + offsets[0]}{parts[1]}"
    out = parts[0]
    for off, part in zip(offsets, parts[1:]):
        out += str(layer + off) + part
    return out


def _copy(c: NodeCost, changes: dict[str, Any]) -> NodeCost:
    # NodeCost is a frozen dataclass; a __dict__ copy is ~4x faster than dataclasses.replace,
    # which matters at thousands of nodes per candidate
    new = object.__new__(NodeCost)
    new.__dict__.update(c.__dict__)
    new.__dict__.update(changes)
    return new


@dataclass
class _Family:
    reference: Graph
    order: list[str]  # the reference's group order: "embed", "layers", "head"
    embed: list[NodeCost]
    heads: dict[str, _Template] = field(default_factory=dict)  # by the last layer's kind
    layers: dict[Role, _Template] = field(default_factory=dict)
    signature: dict[str, str] = field(default_factory=dict)  # layer kind -> block signature

    @property
    def ref_params(self) -> tuple[int, int]:
        """(all, expert) parameters on the reference's nodes."""
        nodes = self.reference.nodes
        return sum(n.params for n in nodes), sum(n.params_expert for n in nodes)


class DerivedGraph(Graph):
    """A Graph assembled from a family reference: every cost field is exact. Its `model` (the
    top-level FX graph, one call per layer) is not assembled; reading it lowers the experiment
    directly once, because a search never needs it."""

    _model: Any = None
    _source: tuple | None = None

    @property  # type: ignore[override]
    def model(self):
        if self._model is None and self._source is not None:
            exp, opts = self._source
            self._model = lower(exp, **opts).model
        return self._model

    @model.setter
    def model(self, value) -> None:
        self._model = value

    def __repr__(self) -> str:
        return (f"DerivedGraph({self.experiment_name!r}, {self.n_layers} layers, {len(self.nodes)} nodes, "
                f"params {self.params_total:,})")


@dataclass
class CacheStats:
    lowered: int = 0  # direct lowerings (references, and experiments that cannot be derived)
    derived: int = 0  # graphs assembled from a family reference
    shared: int = 0  # requests answered with an already built graph
    lower_seconds: float = 0.0
    derive_seconds: float = 0.0
    not_derivable: dict[str, int] = field(default_factory=dict)  # reason -> experiments lowered directly

    def as_dict(self) -> dict[str, Any]:
        return {"lowered": self.lowered, "derived": self.derived, "shared": self.shared,
                "lower_seconds": self.lower_seconds, "derive_seconds": self.derive_seconds,
                "not_derivable": dict(self.not_derivable)}


class GraphCache:
    """`cache.lower(exp)` returns what `vlac.lower(exp)` returns (every cost identical), lowering
    each family once. `verify=True` also lowers every derived experiment directly and raises on
    any difference (for tests and benchmarks). `max_graphs` and `max_families` bound what is kept
    (least recently used first out): a finished flagship-sized graph holds thousands of records."""

    def __init__(self, verify: bool = False, max_graphs: int = 16, max_families: int = 64):
        self.verify = verify
        self.max_graphs, self.max_families = max_graphs, max_families
        self.stats = CacheStats()
        self._families: OrderedDict[str, _Family | str] = OrderedDict()  # key -> family, or why it cannot derive
        self._graphs: OrderedDict[str, Graph] = OrderedDict()

    def lower(self, exp: Experiment, micro_batch: int = 1, seq_len: int | None = None,
              dtype: str | None = None) -> Graph:
        opts = {"micro_batch": micro_batch, "seq_len": seq_len, "dtype": dtype}
        data = _without(exp.model_dump(mode="json"), PLAN_ONLY_FIELDS)
        graph_key = _key({"spec": data, "opts": opts})
        g = self._graphs.get(graph_key)
        if g is not None:
            self.stats.shared += 1
            self._graphs.move_to_end(graph_key)
            return g if g.experiment_name == exp.name else _renamed(g, exp.name)
        g = self._build(exp, _key({"spec": _without(data, PER_LAYER_FIELDS), "opts": opts}), opts)
        self._graphs[graph_key] = g
        if len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return g

    # ---- building -----------------------------------------------------------------------------
    def _build(self, exp: Experiment, family_key: str, opts: dict[str, Any]) -> Graph:
        kinds = layer_kinds(exp)
        fam = self._families.get(family_key)
        if fam is not None:
            self._families.move_to_end(family_key)
        if fam is None:
            fam = "late fusion: cross-attention layers interleave with the decoder" if exp.fusion.mode == "late" else None
        if fam is None or (isinstance(fam, _Family) and not _covers(fam, kinds)):
            fam = self._families[family_key] = self._add_reference(fam, exp, kinds, opts)
            if len(self._families) > self.max_families:
                self._families.popitem(last=False)
        if isinstance(fam, str):
            self.stats.not_derivable[fam] = self.stats.not_derivable.get(fam, 0) + 1
            return self._lower_directly(exp, opts)
        t0 = time.perf_counter()
        g = _derive(fam, exp, kinds, opts)
        g.lower_seconds = time.perf_counter() - t0
        self.stats.derived += 1
        self.stats.derive_seconds += g.lower_seconds
        if self.verify:
            diffs = graph_differences(g, self._lower_directly(exp, opts))
            if diffs:
                raise AssertionError(f"derived graph of {exp.name} differs from direct lowering:\n  " + "\n  ".join(diffs))
        return g

    def _lower_directly(self, exp: Experiment, opts: dict[str, Any]) -> Graph:
        t0 = time.perf_counter()
        g = lower(exp, **opts)
        self.stats.lowered += 1
        self.stats.lower_seconds += time.perf_counter() - t0
        return g

    def _add_reference(self, fam: _Family | None, exp: Experiment, kinds: tuple[str, ...],
                       opts: dict[str, Any]) -> _Family | str:
        """Lower the target's model at the smallest depth whose layers show every role (and the
        last-layer kind) the target needs, FP8 edge policy off; add its groups to the family."""
        need, last = set(_roles(kinds)), kinds[-1] if kinds else None
        depth = next(d for d in range(1, len(kinds) + 1)
                     if need <= set(_roles(k := layer_kinds(with_depth(exp, d)))) and (k[-1] if k else None) == last)
        ref_exp = with_depth(exp, depth, keep_edges_bf16=False)
        ref = self._lower_directly(ref_exp, opts)
        return _split_reference(fam, ref, layer_kinds(ref_exp))


def _covers(fam: _Family, kinds: tuple[str, ...]) -> bool:
    return all(r in fam.layers for r in _roles(kinds)) and (not kinds or kinds[-1] in fam.heads)


def _split_reference(fam: _Family | None, ref: Graph, kinds: tuple[str, ...]) -> _Family | str:
    depth = len(kinds)
    if ref.n_layers != depth:
        return f"the lowered graph has {ref.n_layers} decoder layers where the spec has {depth}"
    groups: dict[int, list[NodeCost]] = {}
    runs: list[int] = []  # layer tags in node order, one entry per contiguous run
    for n in ref.nodes:
        groups.setdefault(n.layer, []).append(n)
        if not runs or runs[-1] != n.layer:
            runs.append(n.layer)
    if len(runs) != len(set(runs)):
        return "a layer's nodes are not contiguous"
    if [i for i in runs if 0 <= i < depth] != list(range(depth)):
        return "decoder layer groups are not in layer order"
    order: list[str] = []
    for i in runs:
        part = "embed" if i < 0 else "head" if i >= depth else "layers"
        if not order or order[-1] != part:
            order.append(part)
    fam = fam or _Family(ref, order, groups.get(-1, []))
    if fam.order != order or not _same_costs(fam.embed, groups.get(-1, [])):
        return "references of different depths disagree outside the decoder layers"
    for i, (role, sig) in enumerate(zip(_roles(kinds), ref.block_of_layer)):
        if fam.signature.setdefault(role[1], sig) != sig:
            return f"layers of one kind ({role[1]}) lowered to different blocks"
        t = _Template.of(groups[i], i)
        known = fam.layers.get(role)
        if known is not None and known.costs() != t.costs():
            return f"two layers with the same role {role} cost differently"
        fam.layers.setdefault(role, t)
    fam.heads.setdefault(kinds[-1], _Template.of(groups.get(depth, []), depth))
    return fam


def _same_costs(a: list[NodeCost], b: list[NodeCost]) -> bool:
    return len(a) == len(b) and all(vars(x) == vars(y) for x, y in zip(a, b))


def with_depth(exp: Experiment, depth: int, keep_edges_bf16: bool | None = None) -> Experiment:
    """The same experiment with another depth (and FP8 edge policy); the sections are copied
    from the validated experiment, only the changed fields differ."""
    update: dict[str, Any] = {"backbone": exp.backbone.model_copy(update={"layers": depth})}
    if keep_edges_bf16 is not None:
        fp8 = exp.precision.fp8.model_copy(update={"keep_first_last_bf16": keep_edges_bf16})
        update["precision"] = exp.precision.model_copy(update={"fp8": fp8})
    return exp.model_copy(update=update)


def _renamed(g: Graph, name: str) -> Graph:
    # a shallow copy: dataclasses.replace would read DerivedGraph.model and lower the experiment
    out = copy.copy(g)
    out.experiment_name = name
    return out


def _derive(fam: _Family, exp: Experiment, kinds: tuple[str, ...], opts: dict[str, Any]) -> DerivedGraph:
    n_layers = len(kinds)
    edges = exp.precision.fp8.keep_first_last_bf16
    templates = [fam.layers[role] for role in _roles(kinds)]
    head = fam.heads[kinds[-1]]
    layer_nodes: list[NodeCost] = []
    for i, t in enumerate(templates):
        layer_nodes += t.at(i, edge=edges and i in (0, n_layers - 1))
    parts = {"embed": fam.embed, "head": head.at(n_layers, edge=False), "layers": layer_nodes}
    nodes = [n for part in fam.order for n in parts[part]]

    ref = fam.reference
    # parameters not attributed to any node (if the lowering leaves some) carry over unchanged
    on_nodes = sum(n.params for n in fam.embed) + head.params + sum(t.params for t in templates)
    on_nodes_expert = sum(n.params_expert for n in fam.embed) + head.params_expert + sum(t.params_expert for t in templates)
    total = ref.params_total + on_nodes - fam.ref_params[0]
    expert = ref.params_expert + on_nodes_expert - fam.ref_params[1]
    # the active-parameter rule of compiler/lower.py: experts count at top_k / experts
    active_frac = exp.moe.top_k / exp.moe.experts if exp.moe else 1.0

    g = object.__new__(DerivedGraph)
    g.__dict__.update({k: v for k, v in ref.__dict__.items() if k != "model"})  # every other field carries over
    g.experiment_name = exp.name
    g.block_of_layer = [fam.signature[k] for k in kinds]
    g.nodes = nodes
    g.params_total, g.params_expert = total, expert
    g.params_active = int(round(total - expert * (1 - active_frac)))
    g._model, g._source = None, (exp, opts)
    return g


def graph_differences(a: Graph, b: Graph) -> list[str]:
    """Every cost on which two graphs disagree: totals; per layer the parameters, FLOPs, saved
    bytes under each recompute policy; and node by node, each node's costs and each GEMM's name
    and FP8 decision. Empty when equal."""
    out: list[str] = []
    for attr in ("n_layers", "block_of_layer", "micro_batch", "seq_len", "dtype_bytes", "params_total",
                 "params_expert", "params_active", "flops_fwd", "flops_bwd"):
        va, vb = getattr(a, attr), getattr(b, attr)
        if va != vb:
            out.append(f"{attr}: {va} != {vb}")
    la, lb = a.layers(), b.layers()
    if [x.layer for x in la] != [x.layer for x in lb]:
        return out + [f"layer tags: {[x.layer for x in la]} != {[x.layer for x in lb]}"]
    for x, y in zip(la, lb):
        for attr in ("params", "params_expert", "flops_fwd", "flops_bwd", "flops_fp8", "flops_tp_split", "flops_expert"):
            if getattr(x, attr) != getattr(y, attr):
                out.append(f"{x.label} {attr}: {getattr(x, attr)} != {getattr(y, attr)}")
        for p in RECOMPUTE:
            if x.saved[p] != y.saved[p] or x.saved_tp_sharded[p] != y.saved_tp_sharded[p]:
                out.append(f"{x.label} saved[{p}]: {x.saved[p]} != {y.saved[p]}")
    if len(a.nodes) != len(b.nodes):
        return out + [f"node count: {len(a.nodes)} != {len(b.nodes)}"]
    gemm = ("gemm", "router", "attention")
    for x, y in zip(a.nodes, b.nodes):
        vx = {k: v for k, v in vars(x).items() if k not in ("name", "module")}
        vy = {k: v for k, v in vars(y).items() if k not in ("name", "module")}
        if vx != vy or (x.kind in gemm and (x.name, x.module) != (y.name, y.module)):
            changed = sorted(k for k in {*vx, *vy} if vx.get(k) != vy.get(k))
            out.append(f"first differing node: {x.name} vs {y.name} ({', '.join(changed) or 'name'})")
            break
    return out


__all__ = ["CacheStats", "DerivedGraph", "GraphCache", "PER_LAYER_FIELDS", "PLAN_ONLY_FIELDS", "graph_differences",
           "layer_kinds"]
