"""Per-layer cost profile: what one layer of each distinct kind costs, as a function of the
tensor/context/expert-parallel degrees and the micro-batch, evaluated for many degree
combinations at once (numpy), so thousands of layouts cost a few array operations.

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

from dataclasses import dataclass, field, replace

import numpy as np

from vlac.spec.stack import PRESETS as STACKS
from vlac.spec.stack import ResolvedStack

from .graph import RECOMPUTE, Graph, NodeCost
from .hardware import Hardware
from .kernel_costs import KernelCosts, runtime_kernel
from .partition import balanced_partition, equal_share_partition
from .stack_costs import ATTENTION_EFF, StackCosts, fp8_gemm_inputs

MEMBOUND_PASSES = 4.0
MEMBOUND_FWD_SHARE = 1.0 / 3.0
FP8_CAST_BYTES = 4.0  # read 2 (BF16) + write 1 (FP8) + write 1 (transposed FP8)
FP8_AMAX_READ_BYTES = 2.0  # current scaling: one more read of the BF16 tensor for its amax
MEMBOUND_KINDS = ("norm", "elementwise", "loss", "embedding")


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
    moe_part: bool = False  # router, experts or shared experts of a MoE layer (see `times`)


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
    tp_regions: int = 0  # attention / MLP / shared-expert blocks bracketed by TP collectives
    moe_tp_regions: int = 0  # of those, inside an MoE layer (none under local routing)
    flops: float = 0.0  # forward+backward+padding FLOPs (the pipeline split's weight)


class CostProfile:
    def __init__(self, graph: Graph, hw: Hardware, *, hidden: int, heads: int, kv_heads: int, head_dim: int,
                 top_k: int, experts: int, fp8: bool, fp8_recipe: str = "delayed", causal: bool = False,
                 norm: str = "rmsnorm", kernel_costs: KernelCosts | None = None,
                 stack: ResolvedStack | None = None, media_entries: int = 0, expert_load: float = 1.0,
                 capacity_factor: float | None = None):
        self.g, self.hw = graph, hw
        # moe.capacity_factor (None: dropless): vlac's runtime exchanges every expert's capacity
        # slots, padding included, in its capacity dispatch (see `times`)
        self.capacity_factor = capacity_factor
        # dropless routing's imbalance: the busiest expert's tokens over the mean (spec moe.load_factor)
        self.expert_load = expert_load
        self.media_entries = media_entries  # late fusion's media entries per sequence (sent between stages)
        # the software stack (spec.stack; default: what vlac's emitted program runs)
        self.stack = stack or STACKS["vlac"]
        # vlac's runtime gathers a MoE layer's input over cp and tp (exact capacity); the other
        # stacks route each rank's own tokens (see `times`)
        self.moe_gathered = self.stack.preset == "vlac"
        fp8_inputs = fp8_gemm_inputs(graph) if fp8 and hw.has_fp8 and self.stack.fp8_stored_inputs else frozenset()
        self.stack_costs = StackCosts(self.stack, act_bytes=graph.dtype_bytes, hidden=hidden, head_dim=head_dim,
                                      heads=heads, norm=norm, fp8_inputs=fp8_inputs)
        self.norm = norm
        # measured kernel rates replace the assumed HBM efficiency for the traffic of their ops
        self.kernel_costs = kernel_costs or KernelCosts(hw.cluster.gpu.memory_bandwidth)
        self.causal = causal
        self.q_dim = heads * head_dim
        self.seq_len, self.hidden, self.top_k, self.experts = graph.seq_len, hidden, top_k, experts
        self.act_bytes = graph.dtype_bytes
        # K and V of one token (GQA: kv_heads of head_dim), exchanged by context parallelism
        self.kv_bytes_per_token = 2 * kv_heads * head_dim * graph.dtype_bytes
        self.kv_heads = kv_heads
        # flash attention keeps q, k, v, out and an fp32 log-sum-exp per head and token
        self.flash_saved_per_token = (2 * heads * head_dim + 2 * kv_heads * head_dim) * graph.dtype_bytes + 4 * heads
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
        saved = {pol: [0.0, 0.0, 0.0] for pol in RECOMPUTE}
        mem = [0.0, 0.0, 0.0]
        mem_kernels: dict[str, list[float]] = {}
        regions = set()
        tokens = self.seq_len * self.g.micro_batch
        for n in nodes:
            kept = self.stack_costs.saved(n, tokens)
            p.params_dense += n.params_dense + n.params_embedding
            p.params_expert += n.params_expert
            if n.params_expert:
                p.params_frozen_expert += n.params_frozen
            else:
                p.params_frozen_dense += n.params_frozen
            p.flops += n.flops_fwd + n.flops_bwd + n.flops_overcompute
            if n.fp8_eligible:
                p.params_fp8 += n.params
            part = self._tp_part(n, kind)
            if n.kind in ("gemm", "router") and n.gemm_mnk:
                m, nn_, k = n.gemm_mnk
                groups = self.experts if n.expert else 1
                row = n.tp_split and kind == "block" and not n.act_tp_sharded
                p.gemms.append(Gemm(n.flops_fwd, n.flops_bwd / n.flops_fwd if n.flops_fwd else 0.0,
                                    n.flops_overcompute, m, nn_, k, groups, n.tp_split, row, n.expert, n.fp8_eligible,
                                    bool(getattr(n, "sp_split", False)),
                                    p.moe and self.moe_gathered and ".mlp." in n.module))
                if n.tp_split and kind == "block":
                    regions.add(".".join(n.module.split(".")[:-1]))
                if n.name.endswith("dropless_experts"):
                    # the permutation around the grouped GEMMs: each kernel moves the tokens
                    # (rows / top_k) and the padded groups (rows) once forward, once backward
                    rows, d = m, k
                    moved = 2.0 * (rows / max(1, self.top_k) + rows) * d * self.act_bytes
                    mem[part] += 2 * moved
                    for kernel in ("moe_permute", "moe_unpermute"):
                        mem_kernels.setdefault(kernel, [0.0, 0.0, 0.0])[part] += moved
            elif n.kind == "attention":
                # a fused causal kernel skips the masked half; an unfused one computes it all
                half = 0.5 if self._dense_causal(n) and self.stack_costs.fused_attention else 1.0
                p.attn_score_bytes += self.stack_costs.score_traffic(self.seq_len, self.seq_len) * self.g.micro_batch
                p.attn_fwd += n.flops_fwd * half
                p.attn_bwd += n.flops_bwd * half
                p.flops -= (n.flops_fwd + n.flops_bwd) * (1 - half)
            elif n.kind in MEMBOUND_KINDS:
                # plus what eager kernels move beyond the 4 passes (stack_costs.eager_traffic)
                mem[part] += MEMBOUND_PASSES * kept["none"] + self.stack_costs.eager_traffic(n, tokens)
                kernel = runtime_kernel(n.kind, n.module, n.name, self.norm)
                if kernel is not None:
                    mem_kernels.setdefault(kernel, [0.0, 0.0, 0.0])[part] += MEMBOUND_PASSES * kept["none"]
            scores = self.stack_costs.unfused_scores(self.seq_len, self.seq_len, self.g.micro_batch) \
                if n.kind == "attention" else None
            for pol in RECOMPUTE:
                b = kept[pol]
                if scores is not None:
                    b = min(b, self.flash_saved_per_token * tokens * self.stack_costs.dtype_scale) + scores[pol]
                saved[pol][part] += b
        mb = self.g.micro_batch  # the graph was lowered for `mb` sequences: store per sequence
        p.saved = {pol: tuple(x / mb for x in v) for pol, v in saved.items()}
        p.mem = tuple(x / mb for x in mem)
        p.mem_kernels = {k: tuple(x / mb for x in v) for k, v in sorted(mem_kernels.items())}
        p.attn_fwd /= mb
        p.attn_bwd /= mb
        p.attn_score_bytes /= mb
        p.flops /= mb
        p.gemms = [replace(gm, flops=gm.flops / mb, over=gm.over / mb, m=gm.m // mb) for gm in p.gemms]
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
        dense = 4.0 * self.seq_len ** 2 * self.q_dim * self.g.micro_batch
        return self.causal and n.flops_fwd >= 0.99 * dense

    @property
    def runtime_kernels(self) -> frozenset[str]:
        """The runtime kernels (vlac.compiler.kernel_costs.COSTED) whose traffic some layer moves;
        fp8_cast when FP8 expert GEMMs cast their operands with it (vlac.runtime.fp8_experts)."""
        kernels = {k for p in self.profiles for k in p.mem_kernels}
        if self.fp8 and any(g.expert and g.fp8_eligible for p in self.profiles for g in p.gemms):
            kernels.add("fp8_cast")
        return frozenset(kernels)

    # ---- per-layer times for many degree combinations ---------------------------------------
    def times(self, tp, sp, cp, mb, ep, etp) -> dict[str, np.ndarray]:
        """Seconds per micro-batch for every key, arrays shaped [combos, keys]:
        gemm_fwd, gemm_bwd, gemm_wgrad, attn_fwd, attn_bwd, mem_fwd, mem_bwd, selective_rerun (the
        forward work the stack's selective recompute repeats: mem_fwd, or attn_fwd for
        core_attention; stack_costs), and the communication a layer issues: tp_fwd/tp_bwd,
        ep_fwd/ep_bwd, cp (total, before overlap)."""
        tp, cp, mb, ep, etp = (np.asarray(a, dtype=float) for a in (tp, cp, mb, ep, etp))
        sp = np.asarray(sp, dtype=bool)
        hw = self.hw
        shape = (tp.shape[0], self.n_keys)
        out = {name: np.zeros(shape) for name in ("gemm_fwd", "gemm_bwd", "gemm_wgrad", "attn_fwd", "attn_bwd",
                                                   "mem_fwd", "mem_bwd", "selective_rerun", "tp_fwd", "tp_bwd",
                                                   "ep_fwd", "ep_bwd", "cp")}
        seqs = mb / cp  # sequences' worth of tokens per GPU before tensor parallelism
        # vlac's runtime routes a dropless MoE layer's own sequence shard under tp with etp = 1
        # (runtime/parallel/moe_local_routing.py): no gather, 1/tp of the micro-batch per rank
        local_moe = self.moe_gathered & (self.capacity_factor is None) & (etp == 1) & (tp > 1)
        moe_tokens = np.where(local_moe, mb / tp, mb)
        act_msg = seqs * self.seq_len * self.hidden * self.act_bytes  # one full activation
        sp_div = np.where(sp, tp, 1.0)
        for j, p in enumerate(self.profiles):
            cast = np.zeros_like(tp)
            expert_cast = np.zeros_like(tp)  # cast by vlac's fp8_cast kernel (the experts' FP8 GEMMs)
            for g in p.gemms:
                if g.moe_part:
                    # vlac's runtime gathers a MoE layer's input over cp and tp, so that capacity
                    # and drops are those of one process: every rank routes the whole micro-batch
                    # and runs its experts (and the shared ones) on it, split only by etp
                    # (runtime/parallel/context_parallel.py, tensor_parallel.py); costed as run.
                    # A dropless layer under tp with etp = 1 routes its shard (moe_tokens).
                    # Not charged: the activations it saves for the whole micro-batch
                    scale = moe_tokens / np.where(g.expert | g.tp_split, etp, 1.0)
                    if g.expert:
                        m = g.m / g.groups * moe_tokens * ep
                        n = g.n if g.row_parallel else g.n / etp
                        k = g.k / etp if g.row_parallel else g.k
                        groups = g.groups / ep
                    else:
                        m = g.m * moe_tokens
                        n = g.n / etp if g.tp_split and not g.row_parallel else g.n
                        k = g.k / etp if g.tp_split and g.row_parallel else g.k
                        groups = 1.0
                elif g.expert:
                    scale = seqs / tp
                    slots = g.m / g.groups
                    m = slots * seqs * ep * etp / tp
                    n = g.n if g.row_parallel else g.n / etp
                    k = g.k / etp if g.row_parallel else g.k
                    groups = g.groups / ep
                elif g.tp_split:
                    scale = seqs / tp
                    m = g.m * seqs
                    n = g.n / tp if not g.row_parallel else g.n
                    k = g.k / tp if g.row_parallel else g.k
                    groups = 1.0
                else:  # replicated weights: sequence parallelism splits the tokens
                    tokens_split = np.where(sp & g.sp_split, tp, 1.0)
                    scale = seqs / tokens_split
                    m = g.m * scale
                    n, k, groups = g.n, g.k, 1.0
                use8 = self.fp8 and g.fp8_eligible
                rate8 = use8 and self.fp8_gemm_rate
                over_f = g.over * scale / (1 + g.bwd_mult)
                # each backward GEMM (input gradient, weight gradient) is a forward-sized GEMM
                one = hw.gemm_seconds(g.flops * scale + over_f, m, n, k, rate8, groups)
                if g.expert:  # the rank holding the busiest expert sets the pace
                    one = one * self.critical_rank_load(ep)
                out["gemm_fwd"][:, j] += one
                out["gemm_bwd"][:, j] += one * g.bwd_mult
                if g.bwd_mult > 1:  # the weight-gradient half, which zero-bubble schedules defer
                    out["gemm_wgrad"][:, j] += one
                if use8:
                    cast += (m * k + m * n) * groups * self.cast_bytes
                    if g.expert:
                        expert_cast += (m * k + m * n) * groups * self.cast_bytes
            attn_split = seqs / tp
            if self.stack_costs.fused_attention:
                eff = ATTENTION_EFF[self.stack.attention]
                out["attn_fwd"][:, j] = hw.attention_seconds(p.attn_fwd * attn_split, eff)
                out["attn_bwd"][:, j] = hw.attention_seconds(p.attn_bwd * attn_split, eff)
            else:  # batched GEMMs over the whole score matrix, which goes through HBM
                scores = hw.memory_seconds(p.attn_score_bytes * attn_split)
                out["attn_fwd"][:, j] = hw.gemm_seconds(p.attn_fwd * attn_split, 1, 1, 1, False) + scores / 3
                out["attn_bwd"][:, j] = hw.gemm_seconds(p.attn_bwd * attn_split, 1, 1, 1, False) + scores * 2 / 3
            traffic = (p.mem[0] / tp + p.mem[1] / sp_div + p.mem[2]) * seqs
            cast_t = hw.memory_seconds(cast)
            out["mem_fwd"][:, j] = hw.memory_seconds(traffic * MEMBOUND_FWD_SHARE) + cast_t / 2
            out["mem_bwd"][:, j] = hw.memory_seconds(traffic * (1 - MEMBOUND_FWD_SHARE)) + cast_t / 2
            for kernel, parts in p.mem_kernels.items():
                if self.kernel_costs.is_measured(kernel):  # else nothing changes, to the last bit
                    moved = (parts[0] / tp + parts[1] / sp_div + parts[2]) * seqs
                    extra = self.kernel_costs.seconds(kernel, moved) - hw.memory_seconds(moved)
                    out["mem_fwd"][:, j] += extra * MEMBOUND_FWD_SHARE
                    out["mem_bwd"][:, j] += extra * (1 - MEMBOUND_FWD_SHARE)
            if self.kernel_costs.is_measured("fp8_cast") and expert_cast.any():
                extra = self.kernel_costs.seconds("fp8_cast", expert_cast) - hw.memory_seconds(expert_cast)
                out["mem_fwd"][:, j] += extra / 2
                out["mem_bwd"][:, j] += extra / 2
            rerun = "attn_fwd" if self.stack.selective_recompute == "core_attention" else "mem_fwd"
            out["selective_rerun"][:, j] = out[rerun][:, j]
            if p.kind != "block":
                continue
            # tensor parallelism: per region, with SP an all-gather and a reduce-scatter forward,
            # backward a reduce-scatter, the output-gradient all-gather and the re-gather of the
            # input for the weight gradient (5 gather-sized units); without SP one all-reduce
            # each way (2 units each)
            unit = hw.all_gather(act_msg, tp)
            regions = p.tp_regions - np.where(local_moe, p.moe_tp_regions, 0)
            out["tp_fwd"][:, j] = regions * 2 * unit
            out["tp_bwd"][:, j] = regions * np.where(sp, 3, 2) * unit
            if p.moe:
                # token dispatch and combine: one all-to-all each way, forward and backward;
                # each rank sends its 1/(tp*cp) of the tokens top_k times, or under vlac's runtime
                # the gathered micro-batch (see above; 1/etp of it)
                routed = moe_tokens / etp if self.moe_gathered else seqs / tp
                a2a_bytes = routed * self.seq_len * self.top_k * self.hidden * self.act_bytes
                if self.moe_gathered:
                    a2a_bytes = a2a_bytes * self.capacity_slots(mb * self.seq_len)
                a2a_bytes = a2a_bytes * self.critical_rank_load(ep)  # what the busiest rank receives
                if self.moe_gathered:  # the cp gather of the MoE input, forward; its reduce-scatter backward
                    out["cp"][:, j] += np.where(cp > 1, 2 * hw.all_gather(act_msg * cp, cp, tp), 0.0)
                a2a = hw.all_to_all(a2a_bytes, ep, etp)
                # expert tensor parallelism gathers the received tokens over etp and scatters
                # the results back (a TP region over the expert activations)
                etp_unit = hw.all_gather(a2a_bytes * etp, etp, 1)
                out["ep_fwd"][:, j] = 2 * a2a + 2 * etp_unit
                out["ep_bwd"][:, j] = 2 * a2a + 3 * etp_unit
            if p.attn_fwd > 0:
                # ring attention: cp-1 K/V chunk exchanges forward, K/V and their gradients
                # backward; heads split over TP ranks (K/V replicated when tp > kv_heads)
                chunk = seqs * self.seq_len * self.kv_bytes_per_token / np.minimum(tp, self.kv_heads)
                across = tp * cp > hw.node_size
                out["cp"][:, j] += np.where(cp > 1, 3 * (cp - 1) * hw.p2p(chunk, across), 0.0)
        return out

    def critical_rank_load(self, ep) -> np.ndarray:
        """Tokens of the expert-parallel rank holding the busiest expert over a rank's mean, under
        dropless routing with `expert_load` (L) = the busiest expert's tokens over the mean: that
        expert and E/ep - 1 others sharing the rest of the load evenly, so
        [L + (E/ep - 1) (E - L) / (E - 1)] / (E/ep): 1 when one rank holds every expert (the
        total is fixed), L when each rank holds one expert."""
        ep = np.asarray(ep, dtype=float)
        e, load = float(self.experts), self.expert_load
        if load == 1.0 or e <= 1:
            return np.ones_like(ep)
        local = e / ep
        return (load + (local - 1) * (e - load) / (e - 1)) / local

    def capacity_slots(self, tokens: np.ndarray) -> np.ndarray:
        """Slots exchanged per routed copy by vlac's capacity dispatch: each of the E experts
        gets C = ceil(tokens * top_k * capacity_factor / E) slots (runtime/moe.py `capacity`), all
        sent through the all-to-all whether filled or not; 1 when dropless (only routed copies move)."""
        if self.capacity_factor is None or self.top_k == 0:
            return np.ones_like(tokens)
        e, k, cf = self.experts, self.top_k, round(self.capacity_factor * 1000)  # the runtime's 1/1000 steps
        return e * np.ceil(tokens * k * cf / (e * 1000)) / (tokens * k)

    # ---- pipeline stage split -------------------------------------------------------------------
    def stage_chunks(self, n_chunks: int, interleaved: bool = False) -> list[list[int]]:
        """Contiguous chunks of layer positions (indices into `self.layers`), balanced on the
        layers' FLOPs (forward, backward and padding); the embeddings ride with the first
        decoder layer and the head with the last, and every chunk holds a decoder layer.
        One chunk per rank: the heaviest chunk is minimised. Interleaved (chunk c on rank
        c % pp): what a rank sums over its chunks matters, so chunks are cut where the running
        total is nearest to equal shares."""
        weights = [self.profiles[k].flops for k in self.sequence]
        blocks = [i for i, layer in enumerate(self.layers) if 0 <= layer < self.g.n_layers]
        if n_chunks > len(blocks):
            raise ValueError(f"{n_chunks} pipeline chunks for {len(blocks)} decoder layers")
        before = [i for i in range(len(weights)) if i < blocks[0]]
        after = [i for i in range(len(weights)) if i > blocks[-1]]
        w = [weights[i] for i in blocks]
        w[0] += sum(weights[i] for i in before)
        w[-1] += sum(weights[i] for i in after)
        bounds = (equal_share_partition if interleaved else balanced_partition)(w, n_chunks)
        chunks = [[blocks[i] for i in range(a, b)] for a, b in bounds]
        chunks[0] = before + chunks[0]
        chunks[-1] = chunks[-1] + after
        return chunks


__all__ = ["CostProfile", "Gemm", "LayerProfile", "balanced_partition", "equal_share_partition"]
