"""The lowered graph: an FX GraphModule per distinct block, the model around them, and one cost
record per node, replicated per layer with its layer tag.

How a node's figures divide over a parallel layout (per micro-batch, per rank):

- tensor parallelism (tp): nodes with `tp_split` (attention core, the projections and MLP GEMMs
  of attention/MLP modules, the vocabulary-parallel embedding and output head) divide their FLOPs
  and weights by tp; nodes with `act_tp_sharded` (activations between a column- and a
  row-parallel GEMM, and the vocabulary-sharded logits) divide their saved bytes by tp;
- sequence parallelism (sp, with tp): nodes with `sp_split` run on S/tp tokens (norms,
  residuals, router, routed experts, the block input), so their remaining FLOPs and saved bytes
  divide by tp as well. Attention masks and their biases stay whole on every rank;
- context parallelism (cp): every node runs on S/cp query tokens (load-balanced causal chunks),
  so all FLOPs and saved bytes divide by cp;
- expert parallelism (ep): expert weights (`expert`) divide by ep; with balanced routing each
  rank computes E/ep experts on ep times the tokens, so per-rank expert FLOPs and bytes are what
  they are without ep.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import networkx as nx
import torch.fx as fx

RECOMPUTE = ("none", "selective", "full")
KINDS = ("gemm", "attention", "norm", "elementwise", "embedding", "router", "loss", "input", "other")
# what `selective` keeps inside a block (vlac.runtime.recompute): outputs of these kinds and the
# block's inputs; everything else is recomputed in the backward pass
SELECTIVE_KEEPS = ("gemm", "attention", "router", "input")


@dataclass(frozen=True)
class NodeCost:
    """What one FX node costs for one micro-batch of `Graph.micro_batch` sequences.

    flops are for the whole op (see the module docstring for how they divide across ranks);
    `flops_fwd`/`flops_bwd` count useful work (causal attention as causal, MoE experts for the
    tokens routed to them), `flops_overcompute` the forward+backward work on capacity padding.
    `saved` gives the bytes this node's outputs (and op-internal buffers) keep alive between
    forward and backward under each recompute policy.
    """

    name: str
    kind: str
    module: str
    layer: int  # -1 before the decoder (embeddings), n_layers after it (head, loss)
    params_dense: int = 0
    params_expert: int = 0
    params_embedding: int = 0
    params_frozen: int = 0  # of the above, frozen (requires_grad off): no gradient, no optimizer state
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
    causal: bool = False  # attention counted causal: flops_fwd is half the dense QK^T + PV
    # attention: the share of the dense Sq x Sk scores flops_fwd counts (0.5 causal, less for a
    # sliding window: node_costs.window_pairs); 1.0 for every other node
    score_fraction: float = 1.0
    in_block: bool = False  # inside a block, so recompute policies apply to it
    sp_split: bool = False
    # full recompute reruns this node's forward: checkpoint stops recomputing a block once the
    # last tensor its forward saved exists again, so trailing ops (the last GEMM) are not rerun
    recomputed: bool = True

    @property
    def params(self) -> int:
        return self.params_dense + self.params_expert + self.params_embedding

    def flops_recompute(self, policy: str) -> float:
        """Forward FLOPs run again in the backward pass under `policy`."""
        if not self.in_block or policy == "none" or (policy == "selective" and self.kind in SELECTIVE_KEEPS):
            return 0.0
        if policy == "full" and not self.recomputed:
            return 0.0
        total = self.flops_fwd + self.flops_bwd
        over_fwd = self.flops_overcompute * (self.flops_fwd / total) if total else 0.0
        return self.flops_fwd + over_fwd

    def _divisor(self, tp: int, sp: bool, cp: int, tp_sharded: bool) -> int:
        return cp * (tp if tp_sharded or (sp and self.sp_split) else 1)

    def flops_per_rank(self, tp: int = 1, sp: bool = False, cp: int = 1, recompute: str = "none") -> float:
        """Forward + backward (+ over-compute + recompute) FLOPs one rank runs for this node."""
        total = self.flops_fwd + self.flops_bwd + self.flops_overcompute + self.flops_recompute(recompute)
        return total / self._divisor(tp, sp, cp, self.tp_split)

    def saved_per_rank(self, policy: str = "none", tp: int = 1, sp: bool = False, cp: int = 1) -> float:
        return self.saved[policy] / self._divisor(tp, sp, cp, self.act_tp_sharded)

    def params_per_rank(self, tp: int = 1, ep: int = 1) -> float:
        return (self.params_dense + self.params_embedding) / (tp if self.tp_split else 1) + self.params_expert / ep


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
    flops_overcompute: float = 0.0
    flops_recompute: dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in RECOMPUTE})
    flops_by_kind: dict[str, float] = field(default_factory=dict)
    nodes: int = 0

    @property
    def fp8_share(self) -> float:
        total = self.flops_fwd + self.flops_bwd
        return self.flops_fp8 / total if total else 0.0


@dataclass
class Graph:
    """`model` is the top-level graph with each block as one call_module node; `blocks` maps a
    block signature to its traced GraphModule (analysed once, shared by every layer with that
    signature); `block_of_layer` gives each decoder layer's signature; `nodes` lists every
    node's cost, block nodes repeated per layer."""

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
    boundary_bytes: float = 0.0  # one decoder layer's input: what a pipeline stage boundary sends
    block_paths: dict[str, list[str]] = field(default_factory=dict)  # signature -> module paths of its calls

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
    def flops_overcompute(self) -> float:
        return sum(n.flops_overcompute for n in self.nodes)

    @property
    def flops_per_token(self) -> float:
        """Model FLOPs per training token, the numerator of MFU: forward + backward of the useful
        work, no recompute, no capacity over-compute. The fused attention backward counts as twice
        its forward (dQ, dK, dV, dP), the MFU convention (PaLM, Megatron); the QK^T it recomputes
        inside the kernel is recompute, so it is left to `flops_executed` and the step time."""
        attention_recompute = sum(max(0.0, n.flops_bwd - 2 * n.flops_fwd) for n in self.nodes if n.kind == "attention")
        return (self.flops_fwd + self.flops_bwd - attention_recompute) / self.tokens

    def flops_executed(self, recompute: str = "none") -> float:
        """FLOPs the hardware runs for one micro-batch: useful work, capacity over-compute and
        the forward work `recompute` repeats in the backward pass."""
        return sum(n.flops_fwd + n.flops_bwd + n.flops_overcompute + n.flops_recompute(recompute) for n in self.nodes)

    def saved_bytes(self, policy: str = "none", tp: int = 1, sp: bool = False, cp: int = 1) -> float:
        """Bytes kept for backward for one micro-batch on one rank."""
        return sum(n.saved_per_rank(policy, tp, sp, cp) for n in self.nodes)

    def flops_per_rank(self, tp: int = 1, sp: bool = False, cp: int = 1, recompute: str = "none") -> float:
        return sum(n.flops_per_rank(tp, sp, cp, recompute) for n in self.nodes)

    def params_per_rank(self, tp: int = 1, ep: int = 1) -> float:
        return sum(n.params_per_rank(tp, ep) for n in self.nodes)

    def layers(self) -> list[LayerCost]:
        by_layer: dict[int, LayerCost] = {}
        for n in self.nodes:
            lc = by_layer.get(n.layer)
            if lc is None:
                lc = by_layer[n.layer] = LayerCost(n.layer, self._label(n.layer))
            lc.nodes += 1
            lc.params += n.params
            lc.params_expert += n.params_expert
            lc.flops_fwd += n.flops_fwd
            lc.flops_bwd += n.flops_bwd
            lc.flops_overcompute += n.flops_overcompute
            if n.flops_fwd or n.flops_bwd:
                lc.flops_by_kind[n.kind] = lc.flops_by_kind.get(n.kind, 0.0) + n.flops_fwd + n.flops_bwd
            if n.fp8_eligible:
                lc.flops_fp8 += n.flops_fwd + n.flops_bwd
            if n.tp_split:
                lc.flops_tp_split += n.flops_fwd + n.flops_bwd
            if n.expert:
                lc.flops_expert += n.flops_fwd + n.flops_bwd
            for p in RECOMPUTE:
                lc.saved[p] += n.saved[p]
                lc.flops_recompute[p] += n.flops_recompute(p)
                if n.act_tp_sharded:
                    lc.saved_tp_sharded[p] += n.saved[p]
        return [by_layer[k] for k in sorted(by_layer)]

    def _label(self, layer: int) -> str:
        if layer < 0:
            return "embed"
        if layer >= self.n_layers:
            # multi-token prediction modules (runtime/mtp.py) run on the output side too
            mtp = any(p.startswith("model.mtp.") for paths in self.block_paths.values() for p in paths)
            return "head+MTP+loss" if mtp else "head+loss"
        return f"layer {layer} ({self.block_of_layer[layer]})"

    def layer_graph(self) -> nx.DiGraph:
        """A chain of layer-level costs, the view the pipeline stage split works on; each edge
        carries the activation bytes sent between consecutive layers."""
        g = nx.DiGraph()
        rows = self.layers()
        for lc in rows:
            g.add_node(lc.layer, label=lc.label, params=lc.params, flops=lc.flops_fwd + lc.flops_bwd,
                       flops_overcompute=lc.flops_overcompute, flops_fp8=lc.flops_fp8, saved=dict(lc.saved))
        for a, b in zip(rows, rows[1:]):
            g.add_edge(a.layer, b.layer, bytes=self.boundary_bytes)
        return g

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for n in self.nodes:
            out[n.kind] += n.flops_fwd + n.flops_bwd
        return dict(out)
