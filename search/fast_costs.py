"""A candidate's costs without lowering it: what the planner needs from a graph, in closed form
over the depth, from one lowering per architecture.

Candidates that differ only in `backbone.layers` share everything the planner reads per layer:
each decoder layer of a given role (vlac.compiler.layer_roles: the kind of the layer before it,
its own kind, whether it is the last) costs the same at every depth (vlac.compiler.graph_cache
derives deeper graphs exactly this way). So one lowered reference per architecture gives

- the cost profile (vlac.compiler.profile.CostProfile): one LayerProfile per distinct layer key,
  re-sequenced for the candidate's depth (the key of each layer from its role);
- the model totals the plan reports: parameters (all, expert, active) and model FLOPs per token,
  as the reference's totals plus, per role, (layers of that role in the candidate - in the
  reference) x that role's per-layer sum. Parameters and FLOPs are integer-valued, so the sums
  are exact in any order.

A candidate whose roles the reference does not show gets a reference of its own (lowered at its
depth through the GraphCache), so every architecture is covered; nothing here is fitted.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from vlac.compiler.graph import Graph
from vlac.compiler.layer_roles import Role, roles
from vlac.compiler.profile import CostProfile


@dataclass(frozen=True)
class Totals:
    """What one layer (or a whole graph) adds to the model totals."""

    params: int = 0
    params_expert: int = 0
    flops_fwd: float = 0.0
    flops_bwd: float = 0.0
    attention_recompute: float = 0.0  # the fused attention backward's QK^T, not model FLOPs

    def plus(self, other: Totals, times: int = 1) -> Totals:
        return Totals(self.params + times * other.params, self.params_expert + times * other.params_expert,
                      self.flops_fwd + times * other.flops_fwd, self.flops_bwd + times * other.flops_bwd,
                      self.attention_recompute + times * other.attention_recompute)


def node_totals(nodes) -> Totals:
    # Graph.flops_per_token's terms, node by node (the attention backward beyond 2x forward is recompute)
    return Totals(sum(n.params for n in nodes), sum(n.params_expert for n in nodes),
                  sum(n.flops_fwd for n in nodes), sum(n.flops_bwd for n in nodes),
                  sum(max(0.0, n.flops_bwd - 2 * n.flops_fwd) for n in nodes if n.kind == "attention"))


@dataclass
class Reference:
    """One lowered depth of an architecture, with its profile and per-role costs."""

    graph: Graph
    profile: CostProfile
    key_of_role: dict[Role, int]  # role -> index into profile.profiles
    per_role: dict[Role, Totals]
    role_counts: dict[Role, int]
    signature_of_kind: dict[str, str]
    totals: Totals  # the whole graph's (parameters not on any node included)

    @classmethod
    def of(cls, graph: Graph, profile: CostProfile, kinds: tuple[str, ...], edges: bool) -> Reference | None:
        layer_roles = roles(kinds, edges)
        if graph.n_layers != len(layer_roles):
            return None
        by_layer: dict[int, list] = {}
        for n in graph.nodes:
            by_layer.setdefault(n.layer, []).append(n)
        key_of_role: dict[Role, int] = {}
        per_role: dict[Role, Totals] = {}
        counts: dict[Role, int] = {}
        signature: dict[str, str] = {}
        for i, role in enumerate(layer_roles):
            key = profile.sequence[i + 1]  # position 0 holds the embeddings
            t = node_totals(by_layer.get(i, []))
            if key_of_role.setdefault(role, key) != key or per_role.setdefault(role, t) != t:
                return None  # two layers of one role cost differently: not derivable by depth
            if signature.setdefault(role[1], graph.block_of_layer[i]) != graph.block_of_layer[i]:
                return None
            counts[role] = counts.get(role, 0) + 1
        nodes = node_totals(graph.nodes)
        totals = Totals(graph.params_total, graph.params_expert, nodes.flops_fwd, nodes.flops_bwd,
                        nodes.attention_recompute)
        return cls(graph, profile, key_of_role, per_role, counts, signature, totals)

    def covers(self, needed: list[Role]) -> bool:
        return all(r in self.key_of_role for r in needed)


@dataclass
class Derived:
    """What the planner reads from a candidate's graph, at the candidate's depth."""

    graph: Graph  # the reference's graph with the candidate's depth and totals (nodes are the reference's)
    profile: CostProfile
    reference: int  # which of the architecture's references it comes from


@dataclass
class Architecture:
    """Every reference of one architecture (the spec without its depth)."""

    edges: bool  # whether its graphs are lowered with the FP8 edge policy on (a role of its own for the last layer)
    references: list[Reference] = field(default_factory=list)

    def derive(self, kinds: tuple[str, ...], name: str) -> Derived | None:
        layer_roles = roles(kinds, self.edges)
        at = next((i for i, r in enumerate(self.references) if r.covers(layer_roles)), None)
        if at is None:
            return None
        ref = self.references[at]
        n_layers = len(layer_roles)
        g0, p0 = ref.graph, ref.profile
        totals = ref.totals
        counts: dict[Role, int] = {}
        for r in layer_roles:
            counts[r] = counts.get(r, 0) + 1
        for r in set(counts) | set(ref.role_counts):
            totals = totals.plus(ref.per_role[r], counts.get(r, 0) - ref.role_counts.get(r, 0))
        g = copy.copy(g0)  # a shallow copy: reading a DerivedGraph's `model` would lower it
        g.experiment_name = name
        g.block_of_layer = [ref.signature_of_kind[k] for k in kinds]
        g.params_total, g.params_expert = totals.params, totals.params_expert
        g._fast_totals = totals  # read by model_figures; the nodes stay the reference's
        p = copy.copy(p0)
        p.g = g
        p.layers = [-1, *range(n_layers), n_layers]
        p.sequence = [p0.sequence[0], *(ref.key_of_role[r] for r in layer_roles), p0.sequence[-1]]
        return Derived(g, p, at)


def model_figures(d: Derived, top_k: int, experts: int, moe: bool) -> dict[str, Any]:
    """The plan's `model` section for a derived graph (the rules of vlac.compiler.lower: experts
    count at top_k/experts in the active parameters; MFU counts model FLOPs per token)."""
    g, t = d.graph, d.graph._fast_totals
    active_frac = top_k / experts if moe else 1.0
    return {"params_total": t.params, "params_active": int(round(t.params - t.params_expert * (1 - active_frac))),
            "params_expert": t.params_expert,
            "flops_per_token": (t.flops_fwd + t.flops_bwd - t.attention_recompute) / g.tokens,
            "layers": g.n_layers, "seq_len": g.seq_len}


__all__ = ["Architecture", "Derived", "Reference", "Totals", "model_figures"]
