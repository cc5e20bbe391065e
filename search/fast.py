"""The fast path: a candidate's result without lowering it and without costing every layout.

Per architecture (the spec without its depth) one candidate is lowered (through the GraphCache)
and profiled; every other depth of it is derived in closed form (vlac.search.fast_costs), and its
plan is the planner's choice found by costing only the layouts that can win
(vlac.search.fast_plan). The Result is the one the full path (lower, plan, read the plan JSON)
gives: tests/search/test_fast.py compares them on sampled candidates.

The fast path applies when the objective and the constraints read metrics or spec fields (a
user function or a plan-JSON path needs the whole plan), and gives way to the full path for any
candidate it cannot decide: nothing fits (the full plan then explains why), no runtime-runnable
layout, or a layer role no reference of its architecture shows.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

from vlac.compiler import planner as planner_mod
from vlac.compiler.cost_model import CostModel
from vlac.compiler.graph import RECOMPUTE
from vlac.compiler.graph_cache import GraphCache
from vlac.compiler.layer_roles import edge_policy, layer_kinds, reference_depth, with_depth
from vlac.compiler.plan import Estimate, Plan
from vlac.compiler.search_space import Limits
from vlac.spec import Experiment

from .fast_costs import Architecture, Reference, model_figures
from .fast_plan import FIRST_SHARE, DepthSpaces, LayerTimes, choose
from .metrics import METRICS, Constraint, Objective
from .shape_fit import ShapeFit, topology_key

DEPTH_FIELDS = ("name", "description")  # with backbone.layers: what one architecture's candidates may differ in
# fields that set only the plan's total_steps (vlac.spec Train.total_steps): candidates differing
# only here share a chosen layout, which is planned once
STEPS_FIELDS = ("total_tokens", "steps")


@dataclass
class FastPlan:
    """What the fast path knows of a candidate's plan: enough for every metric."""

    plan: Plan  # the chosen estimate and the model totals (no alternatives, rejections or advice)
    costed: int  # layouts costed, of `legal`
    legal: int


def applies(objective: Objective, constraints: Sequence[Constraint]) -> bool:
    """Whether results need only metrics and spec fields (not the whole plan)."""
    names = [objective.name] if objective.fn is None else None
    if names is None or any(c.fn is not None for c in constraints):
        return False
    names += [c.name for c in constraints]
    return all(n in METRICS or n.startswith("spec.") or n == "feasible" for n in names)


class FastPath:
    """Caches per process: architectures (references), legal layout spaces, planner set-ups."""

    def __init__(self, cache: GraphCache, deepest: float | None = None):
        """`deepest`: the most decoder layers a candidate will have, where known (the search
        space's largest backbone.layers): one set of legal layouts then serves every depth."""
        self.cache = cache
        self.architectures: dict[str, _Known] = {}
        self.spaces = DepthSpaces(deepest=deepest)
        self.fit = ShapeFit()  # new architectures' graphs in closed form over the shape fields
        self.combined: set[str] = set()  # architectures whose reference graph was combined, not lowered
        # per topology, the best step over the lowest bound of its last candidate: a new
        # architecture's first band (shapes of one topology have similar ratios)
        self.ratios: dict[str, float] = {}
        # (architecture, depth) -> model figures, chosen estimate, legal layouts
        self.chosen: dict[tuple[str, int], tuple[dict[str, Any], Estimate, int]] = {}
        # candidates decided here / handed to the full path; layouts costed here / legal
        self.stats = {"decided": 0, "full_path": 0, "costed": 0, "legal": 0}

    def plan(self, exp: Experiment) -> FastPlan | None:
        """The candidate's plan figures, or None where the full path must decide."""
        out = self._plan(exp)
        self.stats["decided" if out is not None else "full_path"] += 1
        if out is not None:
            self.stats["costed"] += out.costed
            self.stats["legal"] += out.legal
        return out

    def _plan(self, exp: Experiment) -> FastPlan | None:
        key = _architecture_key(exp)
        seen = self.chosen.get((key, exp.backbone.layers))
        if seen is not None:  # the same model, layouts and cluster: only the number of steps may differ
            model, est, legal = seen
            return FastPlan(_plan(exp, model, est), 0, legal)
        known = self.architectures.get(key)
        kinds = layer_kinds(exp)
        derived = known.arch.derive(kinds, exp.name) if known is not None else None
        if derived is None and known is None:  # a new architecture: its topology's depth, combined or lowered
            ref_exp = self._reference_experiment(key, exp)
            known = self._add_reference(key, known, ref_exp, self._topology_graph(key, ref_exp))
            derived = known.arch.derive(kinds, exp.name) if known is not None else None
        if derived is None:  # roles the references do not show: a reference at the candidate's own depth
            known = self._add_reference(key, known, exp, self.cache.lower(exp))
            derived = known.arch.derive(kinds, exp.name) if known is not None else None
            if derived is None:
                return None
        base = known.base
        times = known.times[derived.reference]
        derived.profile.times = times  # a layer's times are its reference's, whatever the depth
        moe = exp.moe is not None
        model = model_figures(derived, exp.moe.top_k if moe else 0, exp.moe.experts if moe else 1, moe)
        search = copy.copy(base)  # the architecture's hardware, FP8 and kernel-cost set-up, this candidate's model
        search.exp, search.g = exp, derived.graph
        search.model = CostModel(derived.profile, base.hw, exp.train.global_batch_tokens)
        search.lim = Limits.of(exp, exp.cluster, derived.graph.n_layers)
        search.flops_per_step = model["flops_per_token"] * exp.train.global_batch_tokens
        pins = exp.parallelism.pinned()
        ls = self.spaces.get(search.lim, exp.parallelism.max_pp, pins)
        # the planner's recompute choices under a recompute pin (vlac.compiler.planner.Search.run)
        allowed = tuple(i for i, pol in enumerate(RECOMPUTE) if pins.get("recompute", pol) == pol)
        chosen = choose(search, ls, allowed, times, known.ratio)
        if chosen is None:
            return None
        est, costed, known.ratio = chosen
        self.ratios[known.topology] = known.ratio
        self.chosen[key, exp.backbone.layers] = (model, est, len(ls))
        return FastPlan(_plan(exp, model, est), costed, len(ls))

    def _add_reference(self, key: str, known: _Known | None, exp: Experiment, g) -> _Known | None:
        """A lowered (or combined) graph of `exp` as a reference of its architecture."""
        base = planner_mod.Search(exp, exp.cluster, g)
        edges = edge_policy(exp)
        ref = Reference.of(g, base.model.p, layer_kinds(exp), edges)
        if ref is None:
            return None
        if known is None:
            topology = topology_key(key)
            known = self.architectures[key] = _Known(Architecture(edges), base, topology,
                                                     ratio=self.ratios.get(topology, FIRST_SHARE))
        known.arch.references.append(ref)
        known.times.append(LayerTimes(ref.profile.times))
        return known

    def _reference_experiment(self, key: str, exp: Experiment) -> Experiment:
        """`exp` at its topology's reference depth: the first of its candidates' smallest depth
        whose layer roles include every role of that candidate's layers."""
        depth = self.fit.depth(topology_key(key), 0) or reference_depth(exp, edge_policy(exp))
        return exp if depth == exp.backbone.layers else with_depth(exp, depth)

    def _topology_graph(self, key: str, ref_exp: Experiment):
        """The graph of `ref_exp` combined from its topology's lowered shapes (vlac.search.shape_fit)
        where they determine it, else lowered (and kept as one of those shapes). A topology's first
        combined graph is also lowered and compared; on any difference its graphs are lowered."""
        topo = topology_key(key)
        g = self.fit.combine(topo, ref_exp)
        if g is not None and not self.fit.needs_check(topo):
            self.combined.add(key)
            return g
        lowered = self.cache.lower(ref_exp)
        if g is not None:
            self.fit.check(topo, g, lowered)
        self.fit.add(topo, ref_exp, lowered)
        return lowered


@dataclass
class _Known:
    """An architecture met before: its references, its planner set-up and its layer times."""

    arch: Architecture
    base: planner_mod.Search
    topology: str  # shape_fit.topology_key of its key: read per candidate, parsed once
    times: list[LayerTimes] = field(default_factory=list)  # per reference
    ratio: float = FIRST_SHARE  # best step / lowest bound of its last candidate


# what one architecture's candidates may differ in: its depth, its token budget and its name
_NOT_ARCHITECTURE = {**{k: True for k in DEPTH_FIELDS}, "backbone": {"layers"}, "train": set(STEPS_FIELDS)}


def _architecture_key(exp: Experiment) -> str:
    """The spec as JSON without its depth, budget and name fields. pydantic's own serialiser, a
    quarter of the CPU of model_dump + json.dumps: fields in declaration order, a mapping's keys
    in the order the spec gave them (candidates of one base spec share it; topology_key sorts)."""
    return exp.model_dump_json(exclude=_NOT_ARCHITECTURE)


def _plan(exp: Experiment, model: dict[str, Any], est: Estimate) -> Plan:
    cluster = exp.cluster
    return Plan(experiment=exp.name, cluster={"gpus": cluster.world_size, "gpus_per_node": cluster.gpus_per_node},
                model=model, best=est, closest=None, alternatives=[], rejected=[], stage_split=[], fp8={},
                evaluated=0, pruned=0, total_steps=exp.train.total_steps)


__all__ = ["FastPath", "FastPlan", "applies"]
