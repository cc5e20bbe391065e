"""Assembling a graph from a family reference's per-layer groups (vlac.compiler.graph_cache):
the reference is split into its embedding group, one template per layer role and one head per
last-layer kind; a target depth's graph is those templates laid out in the reference's group
order, each node's `layers.N` moved to its new index and the FP8 edge policy re-applied per
layer as compiler/lower.py does."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from vlac.spec import Experiment

from .graph import Graph, NodeCost
from .layer_roles import Role, roles
from .lower import lower

# compiler/lower.py's reason for an eligible GEMM kept out of FP8 on the first/last layer
EDGE_LAYER_REASON = "first/last decoder layer kept in BF16 (precision.fp8.keep_first_last_bf16)"
_LAYER_INDEX = re.compile(r"(?:(?<=\.)|^)layers\.(\d+)(?=\.|$)")


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
class Family:
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


def split_reference(fam: Family | None, ref: Graph, kinds: tuple[str, ...]) -> Family | str:
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
    fam = fam or Family(ref, order, groups.get(-1, []))
    if fam.order != order or not _same_costs(fam.embed, groups.get(-1, [])):
        return "references of different depths disagree outside the decoder layers"
    for i, (role, sig) in enumerate(zip(roles(kinds, edges=False), ref.block_of_layer)):
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


def derive(fam: Family, exp: Experiment, kinds: tuple[str, ...], opts: dict[str, Any]) -> DerivedGraph:
    n_layers = len(kinds)
    edges = exp.precision.fp8.keep_first_last_bf16
    templates = [fam.layers[role] for role in roles(kinds, edges=False)]
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



__all__ = ["DerivedGraph", "EDGE_LAYER_REASON", "Family", "derive", "split_reference"]
