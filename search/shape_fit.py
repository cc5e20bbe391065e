"""A new architecture's graph costs without lowering it: an exact linear combination of the
lowered graphs of other shapes of the same topology.

Every numeric cost of a lowered node (parameters, FLOPs, saved bytes, GEMM dimensions) is a
product of tensor dimensions summed over tensors and ops, so within one *topology* (the spec
with its shape fields set aside: same modules, same ops, same node list) it is a polynomial in
the shape fields SHAPE_FIELDS, of degree at most DEGREE in each. Given lowered graphs at shapes
x_1..x_R and a new shape x, find weights w with sum_i w_i m(x_i) = m(x) for every monomial m of
that class (exact rational arithmetic); then every such polynomial satisfies f(x) = sum_i w_i
f(x_i), and the new graph's costs are that combination of the lowered ones, computed exactly.
Where no such weights exist (x outside the span of the shapes lowered so far) the caller lowers
x, and it joins the topology's shapes.

What is not polynomial is not fitted: the MoE capacity (a ceiling) enters as a field of its own,
computed from the spec per candidate; the FP8 eligibility of a GEMM (its N and K multiples of 16,
vlac.compiler.annotate) must come out as in the lowered graphs, checked on the combined
dimensions; the hardware's kernel-efficiency tables are read by the cost profile built on the
combined graph, per candidate. Node structure (names, kinds, sharding marks) must be identical
across the graphs combined. The class (DEGREE) is an assumption, so a topology's first
prediction is also lowered and compared in full (vlac.compiler.graph_cache.graph_differences and
every node field); a topology that disagrees is lowered from then on, and counted.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import operator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from vlac.compiler.graph import RECOMPUTE, Graph, NodeCost
from vlac.compiler.graph_diff import graph_differences
from vlac.compiler.graph_templates import EDGE_LAYER_REASON
from vlac.compiler.node_costs import multiple_of_16
from vlac.spec import Experiment

# the spec fields a topology's shapes may differ in (with the depth, set aside elsewhere)
SPEC_FIELDS = {"backbone": ("hidden", "heads", "kv_heads", "head_dim", "ffn_hidden"),
               "moe": ("experts", "top_k", "expert_hidden", "capacity_factor")}
SHAPE_FIELDS = ("hidden", "ffn", "heads", "kv_heads", "head_dim", "experts", "top_k", "expert_hidden", "capacity")
# the highest power of each field in a cost: a tensor or GEMM has each dimension once, except
# square weights (hidden x hidden: the projectors into the backbone), whose hidden^2 multiplies no
# other shape field (monomials with a squared field hold that field alone)
DEGREE = {"hidden": 2, "ffn": 1, "heads": 1, "kv_heads": 1, "head_dim": 1, "experts": 1, "top_k": 1,
          "expert_hidden": 1, "capacity": 1}
INT_FIELDS = ("params_dense", "params_expert", "params_embedding", "params_frozen")
FLOAT_FIELDS = ("flops_fwd", "flops_bwd", "flops_overcompute", "score_fraction")
SAME_FIELDS = ("name", "kind", "module", "layer", "tp_split", "act_tp_sharded", "expert", "fp8_eligible",
               "fp8_reason", "causal", "in_block", "sp_split", "recomputed")
CF_SCALE = 1000  # vlac.runtime.moe: the capacity factor as an integer ratio


def shape_of(exp: Experiment) -> tuple[int, ...]:
    """The candidate's SHAPE_FIELDS, resolved as the runtime builds the model."""
    bb, moe = exp.backbone, exp.moe
    capacity = 0
    if moe is not None and moe.capacity_factor is not None:
        # vlac.runtime.moe.MoELayer.capacity for one lowered sequence: ceil(T k cf / E)
        cf = int(round(moe.capacity_factor * CF_SCALE))
        capacity = -(-exp.train.seq_len * moe.top_k * cf // (moe.experts * CF_SCALE))
    return (bb.hidden, bb.d_ffn, bb.heads, bb.n_kv_heads, bb.d_head, moe.experts if moe else 0,
            moe.top_k if moe else 0, (moe.expert_hidden or bb.d_ffn) if moe else 0, capacity)


@functools.lru_cache(maxsize=256)
def topology_key(arch_key: str) -> str:
    """An architecture key (vlac.search.fast) without its shape fields; dropless and capacity
    routing stay apart (different ops). Memoised: the fast path asks it of each new architecture
    three times, and each asking parses the whole spec's JSON."""
    data = json.loads(arch_key)
    for section, names in SPEC_FIELDS.items():
        part = data.get(section)
        if isinstance(part, dict):
            dropless = part.get("capacity_factor", 0) is None
            data[section] = {k: v for k, v in part.items() if k not in names}
            if section == "moe":
                data[section]["dropless"] = dropless
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def weights(shapes: list[tuple[int, ...]], target: tuple[int, ...]) -> list[Fraction] | None:
    """w with sum_i w_i m(shapes[i]) = m(target) for every monomial m of the class, or None."""
    varying = [j for j in range(len(target)) if len({s[j] for s in shapes} | {target[j]}) > 1]
    exps = [e for e in itertools.product(*(range(DEGREE[SHAPE_FIELDS[j]] + 1) for j in varying))
            if max(e, default=0) <= 1 or sum(1 for a in e if a) == 1]

    def row(s):
        out = []
        for e in exps:
            v = 1
            for j, a in zip(varying, e):
                v *= s[j] ** a
            out.append(v)
        return out

    # one equation per monomial: sum_i w_i m(shapes[i]) = m(target)
    cols = [row(s) for s in shapes]
    b = row(target)
    return _solve([[cols[i][r] for i in range(len(shapes))] + [b[r]] for r in range(len(exps))], len(shapes))


def _solve(a: list[list[int]], n: int) -> list[Fraction] | None:
    """A solution of the integer augmented system `a` (last column the right-hand side), free
    variables zero; None when inconsistent. Exact: fraction-free Gauss-Jordan elimination on
    integers, each row divided by the gcd of its entries (Fractions would be ten times slower)."""
    pivots, r = [], 0
    for c in range(n):
        p = next((i for i in range(r, len(a)) if a[i][c]), None)
        if p is None:
            continue
        a[r], a[p] = a[p], a[r]
        pr, pv = a[r], a[r][c]
        for i in range(len(a)):
            f = a[i][c]
            if i != r and f:
                row = [x * pv - f * y for x, y in zip(a[i], pr)]
                g = math.gcd(*row)
                a[i] = [x // g for x in row] if g > 1 else row
        pivots.append(c)
        r += 1
    if any(row[n] for row in a[r:]):
        return None
    w = [Fraction(0)] * n
    for i, c in enumerate(pivots):
        w[c] = Fraction(a[i][n], a[i][c])
    return w


class _Weights:
    """Weights w_i = nums[i] / den: integer-valued inputs combine in integer arithmetic (fast,
    exact); others through Fractions."""

    def __init__(self, w: list[Fraction]):
        self.fracs = w
        self.den = math.lcm(*(wi.denominator for wi in w))
        self.nums = [int(wi * self.den) for wi in w]

    def sum_of(self, values: list, integer: bool):
        """sum_i w_i values[i], exactly; None when an integer field comes out fractional."""
        v0 = values[0]
        if values.count(v0) == len(values):
            # one value v: the weights sum to 1 (the constant monomial is in the class), so the
            # sum is v, as the arithmetic below gives it
            if float(v0).is_integer():
                return int(v0) if integer else float(v0)
            return None if integer else float(Fraction(v0))
        if all(float(v).is_integer() for v in values):
            total = sum(n * int(v) for n, v in zip(self.nums, values))
            if total % self.den == 0:
                q = total // self.den
                return q if integer else float(q)
            return None if integer else float(Fraction(total, self.den))
        if integer:
            return None
        return float(sum((wi * Fraction(v) for wi, v in zip(self.fracs, values)), Fraction(0)))


@dataclass
class _Topology:
    depth: int  # every graph of the topology is lowered (or combined) at this depth
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    graphs: list[Graph] = field(default_factory=list)
    verified: bool = False
    broken: str = ""  # why predictions are off for this topology


class ShapeFit:
    """Per topology, the graphs lowered so far at one depth, and graphs of new shapes combined
    from them. `stats`: graphs combined (a topology's first one is also lowered and compared:
    `verified`), graphs lowered, and why combining fell back to lowering."""

    def __init__(self, verify_first: bool = True):
        self.topologies: dict[str, _Topology] = {}
        self.verify_first = verify_first
        self.stats: dict[str, Any] = {"combined": 0, "lowered": 0, "verified": 0, "not_combinable": {}}

    def depth(self, key: str, default: int) -> int:
        t = self.topologies.get(key)
        return t.depth if t is not None else default

    def add(self, key: str, exp: Experiment, g: Graph) -> None:
        """A graph lowered at the topology's depth joins its shapes."""
        t = self.topologies.setdefault(key, _Topology(g.n_layers))
        if g.n_layers != t.depth or shape_of(exp) in t.shapes:
            return
        t.shapes.append(shape_of(exp))
        t.graphs.append(g)
        self.stats["lowered"] += 1

    def combine(self, key: str, exp: Experiment) -> Graph | None:
        """The graph of `exp` (at the topology's depth) combined from lowered shapes, or None."""
        t = self.topologies.get(key)
        if t is None or t.broken or not t.graphs:
            return None
        w = weights(t.shapes, shape_of(exp))
        if w is None:
            return None
        g = _combined_graph(t, w, exp)
        if g is None:
            why = "node structure, an integral field or a GEMM's FP8 eligibility differs"
            self.stats["not_combinable"][why] = self.stats["not_combinable"].get(why, 0) + 1
            return None
        self.stats["combined"] += 1
        return g

    def check(self, key: str, combined: Graph, lowered: Graph) -> bool:
        """Compare a combined graph with its lowering; a difference turns the topology off."""
        t = self.topologies[key]
        diffs = graph_differences(combined, lowered)
        if not diffs and any(vars(x) != vars(y) for x, y in zip(combined.nodes, lowered.nodes)):
            diffs = ["a node field"]
        if diffs:
            t.broken = diffs[0]
            self.stats["not_combinable"][diffs[0]] = self.stats["not_combinable"].get(diffs[0], 0) + 1
            return False
        t.verified = True
        self.stats["verified"] += 1
        return True

    def needs_check(self, key: str) -> bool:
        return self.verify_first and not self.topologies[key].verified


def _combined_graph(t: _Topology, w: list[Fraction], exp: Experiment) -> Graph | None:
    used = [i for i, wi in enumerate(w) if wi]
    ws = _Weights([w[i] for i in used])
    graphs = [t.graphs[i] for i in used]
    g0 = graphs[0]
    if any(len(g.nodes) != len(g0.nodes) or g.block_of_layer != g0.block_of_layer for g in graphs):
        return None
    nodes = []
    same = operator.attrgetter(*SAME_FIELDS)
    for column in zip(*(g.nodes for g in graphs)):
        n0 = column[0]
        s0 = same(n0)
        if any(same(n) != s0 for n in column[1:]):
            return None
        changes: dict[str, Any] = {}
        for f in INT_FIELDS:
            changes[f] = ws.sum_of([getattr(n, f) for n in column], True)
            if changes[f] is None:
                return None
        for f in FLOAT_FIELDS:
            changes[f] = ws.sum_of([getattr(n, f) for n in column], False)
        changes["saved"] = {p: ws.sum_of([n.saved[p] for n in column], False) for p in RECOMPUTE}
        if n0.gemm_mnk is not None:
            if any(n.gemm_mnk is None for n in column):
                return None
            mnk = tuple(ws.sum_of([n.gemm_mnk[j] for n in column], True) for j in range(3))
            if None in mnk:
                return None
            # compiler/annotate.py's FP8 rule (N and K multiples of 16) is not polynomial: the
            # combined dimensions must give the lowered graphs' outcome
            dims_rule = n0.fp8_eligible or n0.fp8_reason.startswith("GEMM dims") or n0.fp8_reason == EDGE_LAYER_REASON
            if dims_rule and multiple_of_16(mnk[1], mnk[2]) != multiple_of_16(*n0.gemm_mnk[1:]):
                return None
            changes["gemm_mnk"] = mnk
        new = object.__new__(NodeCost)
        new.__dict__.update(n0.__dict__)
        new.__dict__.update(changes)
        nodes.append(new)
    totals = [ws.sum_of([getattr(g, f) for g in graphs], True) for f in ("params_total", "params_expert")]
    if None in totals:
        return None
    out = copy.copy(g0)  # a shallow copy: reading a DerivedGraph's `model` would lower it
    out.experiment_name = exp.name
    out.nodes = nodes
    out.params_total, out.params_expert = totals
    # the active-parameter rule of compiler/lower.py: experts count at top_k / experts
    active_frac = exp.moe.top_k / exp.moe.experts if exp.moe else 1.0
    out.params_active = int(round(out.params_total - out.params_expert * (1 - active_frac)))
    out.boundary_bytes = ws.sum_of([g.boundary_bytes for g in graphs], False)
    out.lower_seconds = 0.0
    if hasattr(out, "_source"):
        out._model, out._source = None, None
    return out


__all__ = ["SHAPE_FIELDS", "ShapeFit", "shape_of", "topology_key", "weights"]
