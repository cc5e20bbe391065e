"""Per-layer cost profile that the planner evaluates layouts against, memoised per
(layer kind, tp, cp, micro-batch, fp8) so thousands of layouts cost a few dictionary lookups."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .graph import RECOMPUTE, Graph, NodeCost
from .hardware import Hardware


@dataclass(frozen=True)
class LayerTimes:
    fwd: float
    bwd: float


class CostProfile:
    def __init__(self, graph: Graph, hw: Hardware):
        self.g, self.hw = graph, hw
        self.layer_keys: list[tuple] = []
        # group nodes by (layer kind, fp8 eligibility pattern); all layers of one key cost the same
        per_layer: dict[int, list[NodeCost]] = {}
        for n in graph.nodes:
            per_layer.setdefault(n.layer, []).append(n)
        self.groups: dict[tuple, list[NodeCost]] = {}
        for layer in sorted(per_layer):
            nodes = per_layer[layer]
            key = self._layer_key(layer, nodes)
            if key not in self.groups:
                self.groups[key] = nodes
            self.layer_keys.append(key)
        self.layers = sorted(per_layer)
        self.params = {k: sum(n.params for n in v) for k, v in self.groups.items()}
        self.params_expert = {k: sum(n.params_expert for n in v) for k, v in self.groups.items()}
        self.fp8_params = {k: sum(n.params for n in v if n.fp8_eligible) for k, v in self.groups.items()}
        self.saved = {k: {p: sum(n.saved[p] for n in v) for p in RECOMPUTE} for k, v in self.groups.items()}
        self.saved_sharded = {k: {p: sum(n.saved[p] for n in v if n.act_tp_sharded) for p in RECOMPUTE}
                              for k, v in self.groups.items()}
        self.is_moe = {k: any(n.expert for n in v) for k, v in self.groups.items()}
        self._times = lru_cache(maxsize=None)(self._compute_times)

    def _layer_key(self, layer: int, nodes: list[NodeCost]) -> tuple:
        if layer < 0:
            return ("embed",)
        if layer >= self.g.n_layers:
            return ("head",)
        return ("block", self.g.block_of_layer[layer], tuple(n.fp8_eligible for n in nodes))

    def times(self, key: tuple, tp: int, cp: int, mb: int, fp8: bool) -> LayerTimes:
        return self._times(key, tp, cp, mb, fp8)

    def _compute_times(self, key: tuple, tp: int, cp: int, mb: int, fp8: bool) -> LayerTimes:
        fwd = bwd = 0.0
        for n in self.groups[key]:
            if n.kind not in ("gemm", "router", "attention"):
                continue
            split = (tp if n.tp_split else 1) * cp
            scale = mb / split
            if n.kind == "attention":
                fwd += self.hw.attention_seconds(n.flops_fwd * scale)
                bwd += self.hw.attention_seconds(n.flops_bwd * scale)
                continue
            m, nn_, k = n.gemm_mnk or (1, 1, 1)
            size = m * nn_ * k * scale
            use8 = fp8 and n.fp8_eligible
            over = n.flops_overcompute * scale
            total = n.flops_fwd + n.flops_bwd
            f_share = n.flops_fwd / total if total else 0.5
            fwd += self.hw.gemm_seconds(n.flops_fwd * scale + over * f_share, size, use8)
            bwd += self.hw.gemm_seconds(n.flops_bwd * scale + over * (1 - f_share), size, use8)
        return LayerTimes(fwd, bwd)
