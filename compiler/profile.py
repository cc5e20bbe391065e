"""Per-layer cost profile: what one layer of each distinct kind costs, as a function of the
tensor/context/expert-parallel degrees and the micro-batch. This module builds it from the
lowered graph; vlac.compiler.layer_times evaluates it for many degree combinations at once
(numpy), so thousands of layouts cost a few array operations.

Layers that cost the same share one key: the embeddings, each distinct decoder block (by block
signature and FP8 pattern: the first and last layers may stay in BF16) and the head with the
losses. Quantities are per sequence of `graph.seq_len` tokens unless named per micro-batch.

Modelling choices (stated so they can be argued with):
- Tensor-parallel sharding: GEMMs marked `tp_split` are column-parallel (N split) unless they
  are the second GEMM of an attention or MLP region (row-parallel, K split): Megatron's layout.
- Expert GEMMs run as one grouped GEMM per projection over the E/ep local experts; with
  sequence parallelism each tensor-parallel rank routes its own 1/tp of the tokens, so expert
  FLOPs per GPU are 1/(tp*cp) of the layer's whatever the expert-tensor-parallel degree etp,
  while the per-expert GEMM has M = slots * ep * etp / (tp * cp) rows and N (or K) / etp.
- Memory-bound (element-wise, normalisation, MoE permutation) kernels move each byte they save
  for backward about 4 times over a training step: written and read once in forward, read and
  its gradient written/read in backward (counting a Megatron/TE Llama layer op by op gives
  ~135 bytes per token per hidden unit, against 4 x ~35 saved: the same within 5 %). A third of
  that traffic is forward, two thirds backward.
- FP8 GEMMs cast their inputs: the activation (M*K) forward and the output gradient (M*N)
  backward are read in BF16 and written in FP8 twice (plain and transposed for the weight
  gradient on Hopper): FP8_CAST_BYTES per element; current scaling reads the tensor once more
  for its amax. FP8 weights are cast once per step (TE caches them across micro-batches).
- Fused attention saves O(s) state (q, k, v, output, fp32 log-sum-exp): the meta-device trace
  runs SDPA's math path and records the s x s probabilities, which a GPU run never keeps.
- Vocabulary-parallel cross entropy keeps the logits split over tensor-parallel ranks.
- Causal attention runs the fused causal kernel, which skips the masked half. The traced graph
  records `is_causal=False` (the mask argument is a proxy while tracing, so the runtime's
  "no mask means causal" test cannot fire), so for a causal experiment an attention node costed
  at the dense count is halved here; explicit masks (bidirectional image spans, prefix-LM) run
  densely.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlac.spec.stack import PRESETS as STACKS
from vlac.spec.stack import ResolvedStack

from .graph import RECOMPUTE, Graph, NodeCost
from .hardware import Hardware
from .kernel_costs import KernelCosts, runtime_kernel
from .layer_times import capacity_slots, critical_rank_load, layer_times
from .partition import balanced_partition, equal_share_partition
from .stack_costs import StackCosts, fp8_gemm_inputs

MEMBOUND_PASSES = 4.0  # MEMBOUND_FWD_SHARE of them forward (vlac.compiler.layer_times)
FP8_CAST_BYTES = 4.0  # read 2 (BF16) + write 1 (FP8) + write 1 (transposed FP8)
FP8_AMAX_READ_BYTES = 2.0  # current scaling: one more read of the BF16 tensor for its amax
MEMBOUND_KINDS = ("norm", "elementwise", "loss", "embedding")
MTP_PREFIX = "model.mtp."  # module paths of the multi-token prediction modules (runtime/mtp.py) in a lowered graph


@dataclass(frozen=True)
class Gemm:
    """One GEMM-like node, per sequence."""

    flops: float  # forward FLOPs that do useful work
    bwd_mult: float  # backward FLOPs / forward FLOPs (2: input and weight gradient)
    over: float  # forward+backward FLOPs spent on capacity padding
    m: int
    n: int
    k: int
    groups: int  # experts in a grouped GEMM
    tp_split: bool
    row_parallel: bool
    expert: bool
    fp8_eligible: bool
    sp_split: bool = False  # not TP-split, but runs on 1/tp of the tokens with sequence parallelism
    moe_part: bool = False  # router, experts or shared experts of a MoE layer routed as vlac's runtime does (see layer_times)
    in_moe: bool = False  # router, experts or shared experts of a MoE layer, on any stack (compiler/ep_overlap.py)
    rerun: bool = False  # rerun by the stack's selective recompute (Megatron's recompute_modules; stack_costs)


@dataclass
class LayerProfile:
    key: tuple
    kind: str  # embed | block | head
    moe: bool = False
    gemms: list[Gemm] = field(default_factory=list)
    attn_fwd: float = 0.0
    attn_bwd: float = 0.0
    attn_score_bytes: float = 0.0  # HBM traffic of an unfused attention's score matrix (stack_costs)
    # memory-bound HBM traffic of a step and saved bytes, in three parts by how they divide over
    # tensor-parallel ranks: always (TP-sharded), with sequence parallelism only, never (masks)
    mem: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # the part of `mem` that a runtime kernel moves (vlac.compiler.kernel_costs), in the same parts
    mem_kernels: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    saved: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # policy -> parts
    params_dense: float = 0.0
    params_expert: float = 0.0
    params_frozen_dense: float = 0.0  # frozen parts of params_dense / params_expert (no gradients or optimizer state)
    params_frozen_expert: float = 0.0
    params_fp8: float = 0.0
    # decoder blocks whose communication this key issues: 1 for a block; on the head key the
    # multi-token prediction modules' blocks (runtime/mtp.py), which run on the output side
    blocks: int = 0
    tp_regions: int = 0  # attention / MLP / shared-expert blocks bracketed by TP collectives
    moe_tp_regions: int = 0  # of those, inside an MoE layer (none under local routing)
    flops: float = 0.0  # forward+backward+padding FLOPs (the pipeline split's weight)
    # HBM bytes per micro-batch (not per sequence), split over TP ranks: an embedding table's dense
    # weight gradient, zero-filled and accumulated once per backward (stack_costs.embedding_grad_bytes)
    grad_dense_bytes: float = 0.0


class CostProfile:
    def __init__(self, graph: Graph, hw: Hardware, *, hidden: int, heads: int, kv_heads: int, head_dim: int,
                 v_head_dim: int | None = None, rope_head_dim: int | None = None,
                 top_k: int, experts: int, fp8: bool, fp8_recipe: str = "delayed", causal: bool = False,
                 norm: str = "rmsnorm", kernel_costs: KernelCosts | None = None,
                 stack: ResolvedStack | None = None, media_entries: int = 0, expert_load: float = 1.0,
                 capacity_factor: float | None = None):
        self.g, self.hw = graph, hw
        # moe.capacity_factor (None: dropless): vlac's runtime exchanges every expert's capacity
        # slots, padding included, in its capacity dispatch (see layer_times)
        self.capacity_factor = capacity_factor
        # dropless routing's imbalance: the busiest expert's tokens over the mean (spec moe.load_factor)
        self.expert_load = expert_load
        self.media_entries = media_entries  # late fusion's media entries per sequence (sent between stages)
        # the software stack (spec.stack; default: what vlac's emitted program runs)
        self.stack = stack or STACKS["vlac"]
        # vlac's runtime gathers a MoE layer's input over cp and tp (exact capacity); the other
        # stacks route each rank's own tokens (see layer_times)
        self.moe_gathered = self.stack.preset == "vlac"
        fp8_inputs = fp8_gemm_inputs(graph) if fp8 and hw.has_fp8 and self.stack.fp8_stored_inputs else frozenset()
        # head widths: query/key `head_dim`, value and rotated widths the same unless given (latent
        # attention, spec/latent_attention.head_shape: q/k nope+rope, v its own, rope its own)
        v_dim = v_head_dim or head_dim
        self.stack_costs = StackCosts(self.stack, act_bytes=graph.dtype_bytes, hidden=hidden, head_dim=head_dim,
                                      v_head_dim=v_dim, rope_head_dim=rope_head_dim or head_dim,
                                      heads=heads, norm=norm, fp8_inputs=fp8_inputs, top_k=top_k,
                                      latent=any(n.module.endswith(".attn.wkv_up") for n in graph.nodes))
        self.norm = norm
        # measured kernel rates replace the assumed HBM efficiency for the traffic of their ops
        self.kernel_costs = kernel_costs or KernelCosts(hw.cluster.gpu.memory_bandwidth)
        self.causal = causal
        self.q_dim = heads * head_dim
        self.dense_attention_width = heads * (head_dim + v_dim)  # QK^T and PV FLOPs per (query, key) / 2
        self.seq_len, self.hidden, self.top_k, self.experts = graph.seq_len, hidden, top_k, experts
        self.act_bytes = graph.dtype_bytes
        # K and V of one token (GQA: kv_heads of head_dim), exchanged by context parallelism
        self.kv_bytes_per_token = kv_heads * (head_dim + v_dim) * graph.dtype_bytes
        self.kv_heads = kv_heads
        # flash attention keeps q, k, v, out and an fp32 log-sum-exp per head and token
        self.flash_saved_per_token = (heads * (head_dim + v_dim) + kv_heads * (head_dim + v_dim)) * graph.dtype_bytes + 4 * heads
        self.fp8 = bool(fp8 and hw.has_fp8)
        # Float8BlockScaling is emulated on Hopper (DESIGN.md): its GEMMs run at the BF16 rate
        self.fp8_gemm_rate = self.fp8 and fp8_recipe != "block"
        self.cast_bytes = FP8_CAST_BYTES + (FP8_AMAX_READ_BYTES if fp8_recipe in ("current", "block") else 0.0)

        per_layer: dict[int, list[NodeCost]] = {}
        for n in graph.nodes:
            per_layer.setdefault(n.layer, []).append(n)
        self.layers = sorted(per_layer)  # -1 = embeddings, n_layers = head + losses
        self.profiles: list[LayerProfile] = []
        index: dict[tuple, int] = {}
        self.sequence: list[int] = []  # profile index of every layer in order
        for layer in self.layers:
            nodes = per_layer[layer]
            key = self._key(layer, nodes)
            if key not in index:
                index[key] = len(self.profiles)
                self.profiles.append(self._profile(key, nodes))
            self.sequence.append(index[key])
        self.n_keys = len(self.profiles)

    # ---- building -----------------------------------------------------------------------------
    def _key(self, layer: int, nodes: list[NodeCost]) -> tuple:
        if layer < 0:
            return ("embed",)
        if layer >= self.g.n_layers:
            return ("head",)
        return ("block", self.g.block_of_layer[layer], tuple(n.fp8_eligible for n in nodes))

    def _profile(self, key: tuple, nodes: list[NodeCost]) -> LayerProfile:
        kind = key[0]
        p = LayerProfile(key, kind, moe=any(n.expert for n in nodes))
        sc, mb = self.stack_costs, self.g.micro_batch  # the graph was lowered for `mb` sequences: stored per sequence
        saved = {pol: [0.0, 0.0, 0.0] for pol in RECOMPUTE}
        mem = [0.0, 0.0, 0.0]
        mem_kernels: dict[str, list[float]] = {}
        regions = set()
        tokens = self.seq_len * mb
        mtp = {n.module.split(".")[2] for n in nodes if n.module.startswith(MTP_PREFIX)} if kind == "head" else set()
        p.blocks = 1 if kind == "block" else len(mtp)
        # running sums, kept in locals and summed in the nodes' order (as the profile's fields would be)
        params_dense = params_expert = frozen_dense = frozen_expert = params_fp8 = 0.0
        flops = attn_fwd = attn_bwd = score_bytes = grad_dense = 0.0
        for n in nodes:
            kept = sc.saved(n, tokens, moe_block=p.moe)
            in_block = kind == "block" or n.module.startswith(MTP_PREFIX)  # split over tp as a decoder block is
            params_dense += n.params_dense + n.params_embedding
            params_expert += n.params_expert
            if n.params_expert:
                frozen_expert += n.params_frozen
            else:
                frozen_dense += n.params_frozen
            flops += n.flops_fwd + n.flops_bwd + n.flops_overcompute
            if n.fp8_eligible:
                params_fp8 += n.params
            part = self._tp_part(n, kind)
            node_kind = n.kind
            if node_kind in ("gemm", "router") and n.gemm_mnk:
                m, nn_, k = n.gemm_mnk
                # the router, experts or shared experts of a MoE layer ('...mlp.x', or the dropless
                # experts node, '...mlp')
                in_moe = p.moe and (".mlp." in n.module or n.module.endswith(".mlp"))
                groups = self.experts if n.expert else 1
                row = n.tp_split and in_block and not n.act_tp_sharded
                p.gemms.append(Gemm(n.flops_fwd / mb, n.flops_bwd / n.flops_fwd if n.flops_fwd else 0.0,
                                    n.flops_overcompute / mb, m // mb, nn_, k, groups, n.tp_split, row, n.expert,
                                    n.fp8_eligible, bool(getattr(n, "sp_split", False)),
                                    in_moe and self.moe_gathered, in_moe, sc.reruns(n, p.moe)))
                if n.tp_split and in_block:
                    regions.add(".".join(n.module.split(".")[:-1]))
                if n.name.endswith("dropless_experts"):
                    # the permutation around the grouped GEMMs: each kernel moves the tokens
                    # (rows / top_k) and the padded groups (rows) once forward, once backward
                    rows, d = m, k
                    moved = 2.0 * (rows / max(1, self.top_k) + rows) * d * self.act_bytes
                    mem[part] += 2 * moved
                    for kernel in ("moe_permute", "moe_unpermute"):
                        mem_kernels.setdefault(kernel, [0.0, 0.0, 0.0])[part] += moved
            elif node_kind == "attention":
                # a fused causal kernel skips the masked half; an unfused one computes it all
                half = 0.5 if self._dense_causal(n) and sc.fused_attention else 1.0
                score_bytes += sc.score_traffic(self.seq_len, self.seq_len) * mb
                attn_fwd += n.flops_fwd * half
                attn_bwd += n.flops_bwd * half
                flops -= (n.flops_fwd + n.flops_bwd) * (1 - half)
                # an unfused kernel's probabilities beside what a fused one keeps
                scores = sc.unfused_scores(self.seq_len, self.seq_len, mb)
                flash = self.flash_saved_per_token * tokens * sc.dtype_scale
                kept = {pol: min(b, flash) + scores[pol] for pol, b in kept.items()}
            elif node_kind in MEMBOUND_KINDS:
                # plus what eager kernels, Megatron's fp32 cross entropy and a fused SwiGLU move
                # beyond the 4 passes (stack_costs.eager_traffic, fused_traffic)
                mem[part] += (MEMBOUND_PASSES * kept["none"] + sc.eager_traffic(n, tokens)
                              + sc.fused_traffic(n, tokens, MEMBOUND_PASSES))
                if node_kind == "embedding":
                    grad_dense += sc.embedding_grad_bytes(n)
                kernel = runtime_kernel(node_kind, n.module, n.name, self.norm)
                if kernel is not None:
                    mem_kernels.setdefault(kernel, [0.0, 0.0, 0.0])[part] += MEMBOUND_PASSES * kept["none"]
            for pol, b in kept.items():
                saved[pol][part] += b
        p.params_dense, p.params_expert, p.params_frozen_dense, p.params_frozen_expert = (
            params_dense, params_expert, frozen_dense, frozen_expert)
        p.params_fp8, p.grad_dense_bytes = params_fp8, grad_dense
        p.saved = {pol: tuple(x / mb for x in v) for pol, v in saved.items()}
        p.mem = tuple(x / mb for x in mem)
        p.mem_kernels = {k: tuple(x / mb for x in v) for k, v in sorted(mem_kernels.items())}
        p.attn_fwd, p.attn_bwd, p.attn_score_bytes, p.flops = attn_fwd / mb, attn_bwd / mb, score_bytes / mb, flops / mb
        p.tp_regions = len(regions)
        p.moe_tp_regions = sum(p.moe and ".mlp." in r + "." for r in regions)
        return p

    @staticmethod
    def _tp_part(n: NodeCost, kind: str) -> int:
        """0: split over TP ranks anyway, 1: split by sequence parallelism only, 2: whole.
        Graphs without `sp_split` marks (older lowerings) split everything but the TP-sharded
        activations by SP, and shard the head's logits (vocabulary-parallel cross entropy)."""
        if not hasattr(n, "sp_split"):
            return 0 if n.act_tp_sharded or kind == "head" else 1
        return 0 if n.act_tp_sharded else (1 if n.sp_split else 2)

    def _dense_causal(self, n: NodeCost) -> bool:
        """An attention node of a causal experiment that the graph costed densely."""
        dense = 2.0 * self.seq_len ** 2 * self.dense_attention_width * self.g.micro_batch
        return self.causal and n.flops_fwd >= 0.99 * dense

    @property
    def runtime_kernels(self) -> frozenset[str]:
        """The runtime kernels (vlac.compiler.kernel_costs.COSTED) whose traffic some layer moves;
        fp8_cast when FP8 expert GEMMs cast their operands with it (vlac.runtime.fp8_experts)."""
        kernels = {k for p in self.profiles for k in p.mem_kernels}
        if self.fp8 and any(g.expert and g.fp8_eligible for p in self.profiles for g in p.gemms):
            kernels.add("fp8_cast")
        return frozenset(kernels)

    # ---- per-layer times for many degree combinations (vlac.compiler.layer_times) -------------
    def times(self, tp, sp, cp, mb, ep, etp) -> dict[str, np.ndarray]:
        """Seconds per micro-batch for every key, arrays shaped [combos, keys] (layer_times)."""
        return layer_times(self, tp, sp, cp, mb, ep, etp)

    def critical_rank_load(self, ep) -> np.ndarray:
        """The busiest expert-parallel rank's tokens over a rank's mean (layer_times)."""
        return critical_rank_load(self.experts, self.expert_load, ep)

    def capacity_slots(self, tokens: np.ndarray) -> np.ndarray:
        """Slots exchanged per routed copy by vlac's capacity dispatch (layer_times)."""
        return capacity_slots(tokens, self.experts, self.top_k, self.capacity_factor)

    # ---- pipeline stage split -------------------------------------------------------------------
    def stage_weights(self) -> tuple[list[float], list[int]]:
        """What the pipeline stage split reads (stage_chunks): each layer position's weight (its
        FLOPs: forward, backward and padding) and the positions of the decoder layers."""
        weights = [self.profiles[k].flops for k in self.sequence]
        blocks = [i for i, layer in enumerate(self.layers) if 0 <= layer < self.g.n_layers]
        return weights, blocks

    def stage_chunks(self, n_chunks: int, interleaved: bool = False,
                     weights: tuple[list[float], list[int]] | None = None) -> list[list[int]]:
        """Contiguous chunks of layer positions (indices into `self.layers`), balanced on the
        layers' FLOPs (forward, backward and padding); the embeddings ride with the first
        decoder layer and the head with the last, and every chunk holds a decoder layer.
        One chunk per rank: the heaviest chunk is minimised. Interleaved (chunk c on rank
        c % pp): what a rank sums over its chunks matters, so chunks are cut where the running
        total is nearest to equal shares. `weights`: stage_weights(), when the caller keeps
        them for many splits."""
        weights, blocks = weights or self.stage_weights()
        if n_chunks > len(blocks):
            raise ValueError(f"{n_chunks} pipeline chunks for {len(blocks)} decoder layers")
        before = list(range(blocks[0]))
        after = list(range(blocks[-1] + 1, len(weights)))
        w = [weights[i] for i in blocks]
        w[0] += sum(weights[i] for i in before)
        w[-1] += sum(weights[i] for i in after)
        bounds = (equal_share_partition if interleaved else balanced_partition)(w, n_chunks)
        chunks = [[blocks[i] for i in range(a, b)] for a, b in bounds]
        chunks[0] = before + chunks[0]
        chunks[-1] = chunks[-1] + after
        return chunks


__all__ = ["CostProfile", "Gemm", "LayerProfile", "balanced_partition", "equal_share_partition"]
