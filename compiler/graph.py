"""The lowered graph: an FX GraphModule per distinct block, the model around them, and one cost
record per node, replicated per layer with its layer tag."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import networkx as nx
import torch.fx as fx

RECOMPUTE = ("none", "selective", "full")
KINDS = ("gemm", "attention", "norm", "elementwise", "embedding", "router", "loss", "input", "other")


@dataclass(frozen=True)
class NodeCost:
    """What one FX node costs for one micro-batch of `Graph.micro_batch` sequences.

    flops are for the whole op (divide by the tensor-parallel degree when `tp_split`);
    `saved` gives the bytes of this node's output (and op-internal buffers) kept for backward
    under each recompute policy; `act_tp_sharded` says whether those bytes are already split
    across tensor-parallel ranks without sequence parallelism (else SP is what splits them).
    """

    name: str
    kind: str
    module: str
    layer: int  # -1 before the decoder (embeddings), n_layers after it (head, loss)
    params_dense: int = 0
    params_expert: int = 0
    params_embedding: int = 0
    flops_fwd: float = 0.0
    flops_bwd: float = 0.0
    flops_overcompute: float = 0.0  # forward+backward FLOPs spent on capacity padding (MoE)
    saved: dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in RECOMPUTE})
    tp_split: bool = False
    act_tp_sharded: bool = False
    expert: bool = False
    gemm_mnk: tuple[int, int, int] | None = None
    fp8_eligible: bool = False
    fp8_reason: str = ""

    @property
    def params(self) -> int:
        return self.params_dense + self.params_expert + self.params_embedding


@dataclass
class LayerCost:
    layer: int
    label: str
    params: int = 0
    params_expert: int = 0
    flops_fwd: float = 0.0
    flops_bwd: float = 0.0
    flops_fp8: float = 0.0  # forward+backward FLOPs of FP8-eligible GEMMs
    flops_tp_split: float = 0.0
    flops_expert: float = 0.0
    saved: dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in RECOMPUTE})
    saved_tp_sharded: dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in RECOMPUTE})


@dataclass
class Graph:
    """`model` is the top-level graph with each decoder block as one call_module node; `blocks`
    maps a block signature to its traced GraphModule (analysed once, shared by every layer with
    that signature); `nodes` lists every node's cost, block nodes repeated per layer."""

    experiment_name: str
    model: fx.GraphModule
    blocks: dict[str, fx.GraphModule]
    block_of_layer: list[str]
    nodes: list[NodeCost]
    micro_batch: int
    seq_len: int
    dtype_bytes: int
    params_total: int
    params_expert: int
    params_active: int
    lower_seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len

    @property
    def n_layers(self) -> int:
        return len(self.block_of_layer)

    @property
    def flops_fwd(self) -> float:
        return sum(n.flops_fwd for n in self.nodes)

    @property
    def flops_bwd(self) -> float:
        return sum(n.flops_bwd for n in self.nodes)

    @property
    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward, no recompute)."""
        return (self.flops_fwd + self.flops_bwd) / self.tokens

    def layers(self) -> list[LayerCost]:
        by_layer: dict[int, LayerCost] = {}
        for n in self.nodes:
            lc = by_layer.get(n.layer)
            if lc is None:
                lc = by_layer[n.layer] = LayerCost(n.layer, self._label(n.layer))
            lc.params += n.params
            lc.params_expert += n.params_expert
            lc.flops_fwd += n.flops_fwd
            lc.flops_bwd += n.flops_bwd
            if n.fp8_eligible:
                lc.flops_fp8 += n.flops_fwd + n.flops_bwd
            if n.tp_split:
                lc.flops_tp_split += n.flops_fwd + n.flops_bwd
            if n.expert:
                lc.flops_expert += n.flops_fwd + n.flops_bwd
            for p in RECOMPUTE:
                lc.saved[p] += n.saved[p]
                if n.act_tp_sharded:
                    lc.saved_tp_sharded[p] += n.saved[p]
        return [by_layer[k] for k in sorted(by_layer)]

    def _label(self, layer: int) -> str:
        if layer < 0:
            return "embed"
        if layer >= self.n_layers:
            return "head+loss"
        return f"layer {layer} ({self.block_of_layer[layer]})"

    def layer_graph(self) -> nx.DiGraph:
        """A chain of layer-level costs, the view the pipeline stage split works on."""
        g = nx.DiGraph()
        rows = self.layers()
        for lc in rows:
            g.add_node(lc.layer, label=lc.label, params=lc.params, flops=lc.flops_fwd + lc.flops_bwd,
                       saved=dict(lc.saved))
        for a, b in zip(rows, rows[1:]):
            g.add_edge(a.layer, b.layer, bytes=self.tokens * self.dtype_bytes)
        return g

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for n in self.nodes:
            out[n.kind] += n.flops_fwd + n.flops_bwd
        return dict(out)
