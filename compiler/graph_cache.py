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
the decoder, 0..L-1 the decoder layers, L the head and loss; vlac.compiler.graph_templates). A
decoder layer's group depends on its *role* (vlac.compiler.layer_roles: the kind of the layer
before it, its own kind, whether it is the last). A target layer copies the group of a reference
layer with the same role, with `layers.N` in its names and module paths moved to the new index;
the head group is copied when the last layer's kind matches; the FP8 edge policy is then applied
per layer as `compiler/lower.py` does. Group order is the reference's, so a derived node list equals a direct lowering's element by
element and every float sum over it is bit-identical (tests/compiler/test_graph_cache.py checks
the costs per layer, the FP8 decisions and the plans).

What cannot be derived is lowered directly, never guessed: late fusion (cross-attention layers
sit between decoder layers every k layers, so depth changes more than the blocks), or a reference
whose layers of one role differ or do not follow the layout described above.
"""

from __future__ import annotations

import copy
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from vlac.spec import Experiment

from .graph import Graph
from .graph_diff import graph_differences
from .graph_templates import EDGE_LAYER_REASON, DerivedGraph, Family, derive, split_reference
from .layer_roles import layer_kinds, reference_depth, roles, with_depth
from .lower import lower

# Fields no part of lowering reads: experiments differing only here share one graph.
PLAN_ONLY_FIELDS = (
    "name", "description", "profiles", "cluster", "launcher", "parallelism", "optimizer",
    "train.total_tokens", "train.steps", "train.global_batch_tokens", "train.seed",
    "train.checkpoint_every", "train.keep_last", "train.log_every",
)
# Fields that decide which block sits where, re-applied per layer when deriving.
PER_LAYER_FIELDS = ("backbone.layers", "moe.layers", "backbone.sliding_window_layers", "backbone.attention_chunk_layers",
                    "precision.fp8.keep_first_last_bf16")


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
class CacheStats:
    lowered: int = 0  # direct lowerings (references, and experiments that cannot be derived)
    derived: int = 0  # graphs assembled from a family reference
    shared: int = 0  # requests answered with an already built graph
    lower_seconds: float = 0.0
    derive_seconds: float = 0.0
    # the same in CPU seconds of this process: what a benchmark on a shared machine can compare
    cpu_seconds: float = 0.0
    not_derivable: dict[str, int] = field(default_factory=dict)  # reason -> experiments lowered directly

    def as_dict(self) -> dict[str, Any]:
        return {"lowered": self.lowered, "derived": self.derived, "shared": self.shared,
                "lower_seconds": self.lower_seconds, "derive_seconds": self.derive_seconds,
                "cpu_seconds": self.cpu_seconds,
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
        self._families: OrderedDict[str, Family | str] = OrderedDict()  # key -> family, or why it cannot derive
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
        if fam is None or (isinstance(fam, Family) and not _covers(fam, kinds)):
            fam = self._families[family_key] = self._add_reference(fam, exp, kinds, opts)
            if len(self._families) > self.max_families:
                self._families.popitem(last=False)
        if isinstance(fam, str):
            self.stats.not_derivable[fam] = self.stats.not_derivable.get(fam, 0) + 1
            return self._lower_directly(exp, opts)
        t0, c0 = time.perf_counter(), time.process_time()
        g = derive(fam, exp, kinds, opts)
        g.lower_seconds = time.perf_counter() - t0
        self.stats.cpu_seconds += time.process_time() - c0
        self.stats.derived += 1
        self.stats.derive_seconds += g.lower_seconds
        if self.verify:
            diffs = graph_differences(g, self._lower_directly(exp, opts))
            if diffs:
                raise AssertionError(f"derived graph of {exp.name} differs from direct lowering:\n  " + "\n  ".join(diffs))
        return g

    def _lower_directly(self, exp: Experiment, opts: dict[str, Any]) -> Graph:
        t0, c0 = time.perf_counter(), time.process_time()
        g = lower(exp, **opts)
        self.stats.lowered += 1
        self.stats.lower_seconds += time.perf_counter() - t0
        self.stats.cpu_seconds += time.process_time() - c0
        return g

    def _add_reference(self, fam: Family | None, exp: Experiment, kinds: tuple[str, ...],
                       opts: dict[str, Any]) -> Family | str:
        """Lower the target's model at the smallest depth whose layers show every role the target
        needs (layer_roles.reference_depth), FP8 edge policy off; add its groups to the family."""
        depth = reference_depth(exp, edges=False)
        ref_exp = with_depth(exp, depth, keep_edges_bf16=False)
        ref = self._lower_directly(ref_exp, opts)
        return split_reference(fam, ref, layer_kinds(ref_exp))


def _covers(fam: Family, kinds: tuple[str, ...]) -> bool:
    return all(r in fam.layers for r in roles(kinds, edges=False)) and (not kinds or kinds[-1] in fam.heads)


def _renamed(g: Graph, name: str) -> Graph:
    # a shallow copy: dataclasses.replace would read DerivedGraph.model and lower the experiment
    out = copy.copy(g)
    out.experiment_name = name
    return out


__all__ = ["CacheStats", "DerivedGraph", "EDGE_LAYER_REASON", "GraphCache", "PER_LAYER_FIELDS", "PLAN_ONLY_FIELDS",
           "graph_differences", "layer_kinds", "with_depth"]
