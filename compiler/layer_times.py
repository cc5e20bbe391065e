"""Per-layer times for many degree combinations: what one layer of each key of a cost profile
(vlac.compiler.profile.CostProfile) takes per micro-batch, for arrays of tensor / sequence /
context / expert / expert-tensor-parallel degrees and micro-batch sizes at once (numpy), so
thousands of layouts cost a few array operations.

The modelling choices (GEMM sharding, memory-bound passes, FP8 casts, fused attention) are
stated in vlac.compiler.profile, which builds the per-sequence quantities costed here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .context_parallel_costs import exchange_seconds, merge_bytes
from .moe_routing import token_shards
from .stack_costs import ATTENTION_EFF

if TYPE_CHECKING:
    from .profile import CostProfile, Gemm, LayerProfile

MEMBOUND_FWD_SHARE = 1.0 / 3.0  # of memory-bound traffic, forward (vlac.compiler.profile)
TIME_NAMES = ("gemm_fwd", "gemm_bwd", "gemm_wgrad", "attn_fwd", "attn_bwd", "mem_fwd", "mem_bwd",
              "selective_rerun", "tp_fwd", "tp_bwd", "ep_fwd", "ep_bwd", "cp", "moe_fwd", "moe_bwd", "moe_wgrad")


def layer_times(prof: CostProfile, tp, sp, cp, mb, ep, etp) -> dict[str, np.ndarray]:
    """Seconds per micro-batch for every key of `prof`, arrays shaped [combos, keys]:
    gemm_fwd, gemm_bwd, gemm_wgrad, attn_fwd, attn_bwd, mem_fwd, mem_bwd, selective_rerun (the
    forward work the stack's selective recompute repeats: mem_fwd, or under core_attention
    attn_fwd for core_attn and the forward of the GEMMs its other recompute_modules rerun;
    stack_costs), and the communication a layer issues: tp_fwd/tp_bwd,
    ep_fwd/ep_bwd, cp (total, before overlap); moe_fwd/moe_bwd/moe_wgrad, the part of the
    gemm figures that a MoE layer's router, experts and shared experts run (the compute an
    expert all-to-all overlap hides the other micro-batch's dispatch and combine behind:
    vlac.compiler.ep_overlap)."""
    tp, cp, mb, ep, etp = (np.asarray(a, dtype=float) for a in (tp, cp, mb, ep, etp))
    sp = np.asarray(sp, dtype=bool)
    hw = prof.hw
    shape = (tp.shape[0], prof.n_keys)
    out = {name: np.zeros(shape) for name in TIME_NAMES}
    seqs = mb / cp  # sequences' worth of tokens per GPU before tensor parallelism
    # vlac's runtime routes an MoE layer's own tokens where they are split, with etp = 1 (compiler/
    # moe_routing.py; dropless or with a capacity): over tp under sp, over cp; no gather there,
    # 1/(tp*cp) of the micro-batch per rank
    dropless = prof.capacity_factor is None
    tp_shards, cp_shards = token_shards(etp, tp, sp, cp)
    # no TP collectives around its shared experts: each tp rank runs them on its own shard (sp) or
    # on the whole sequence (without sp; the search space pairs MoE and tp > 1 with sp)
    local_moe = prof.moe_gathered & (tp > 1) & ((dropless & (etp == 1)) | (tp_shards > 1))
    moe_gathered_cp = prof.moe_gathered & (cp_shards == 1)  # its input gathered over cp
    moe_tokens = mb / (tp_shards * cp_shards)
    sp_div = np.where(sp, tp, 1.0)
    # the rank holding the busiest expert sets the pace of expert GEMMs and all-to-alls
    load = critical_rank_load(prof.experts, prof.expert_load, ep)
    # keys repeat GEMMs (decoder blocks differing only in which layers run FP8): each distinct one
    # is costed once per call
    gemm_costs: dict[Gemm, tuple[np.ndarray, np.ndarray | None]] = {}
    comm = _BlockCollectives(prof, tp, sp, cp, mb, ep, etp, seqs, moe_tokens, moe_gathered_cp, load)
    for j, p in enumerate(prof.profiles):
        # this key's sums over its GEMMs, in the GEMMs' order (out's columns hold them)
        fwd, bwd, wgrad, rerun = (np.zeros_like(tp) for _ in range(4))
        moe_fwd, moe_bwd, moe_wgrad = (np.zeros_like(tp) for _ in range(3))
        cast = np.zeros_like(tp)
        expert_cast = np.zeros_like(tp)  # cast by vlac's fp8_cast kernel (the experts' FP8 GEMMs)
        for g in p.gemms:
            if g not in gemm_costs:
                gemm_costs[g] = _gemm_seconds(prof, g, tp, sp, ep, etp, seqs, moe_tokens, load)
            one, cast_bytes = gemm_costs[g]
            fwd += one
            bwd += one * g.bwd_mult
            if g.bwd_mult > 1:  # the weight-gradient half, which zero-bubble schedules defer
                wgrad += one
            if g.rerun:  # Megatron's selective recompute reruns its forward (stack.recompute_modules)
                rerun += one
            if g.in_moe:
                moe_fwd += one
                moe_bwd += one * g.bwd_mult
                if g.bwd_mult > 1:
                    moe_wgrad += one
            if cast_bytes is not None:
                cast += cast_bytes
                if g.expert:
                    expert_cast += cast_bytes
        for name, total in (("gemm_fwd", fwd), ("gemm_bwd", bwd), ("gemm_wgrad", wgrad), ("selective_rerun", rerun),
                            ("moe_fwd", moe_fwd), ("moe_bwd", moe_bwd), ("moe_wgrad", moe_wgrad)):
            out[name][:, j] = total
        attn_split = seqs / tp
        if prof.stack_costs.fused_attention:
            eff = ATTENTION_EFF[prof.stack.attention]
            out["attn_fwd"][:, j] = hw.attention_seconds(p.attn_fwd * attn_split, eff)
            out["attn_bwd"][:, j] = hw.attention_seconds(p.attn_bwd * attn_split, eff)
        else:  # batched GEMMs over the whole score matrix, which goes through HBM
            scores = hw.memory_seconds(p.attn_score_bytes * attn_split)
            out["attn_fwd"][:, j] = hw.gemm_seconds(p.attn_fwd * attn_split, 1, 1, 1, False) + scores / 3
            out["attn_bwd"][:, j] = hw.gemm_seconds(p.attn_bwd * attn_split, 1, 1, 1, False) + scores * 2 / 3
        traffic = (p.mem[0] / tp + p.mem[1] / sp_div + p.mem[2]) * seqs
        cast_t = hw.memory_seconds(cast)
        out["mem_fwd"][:, j] = hw.memory_seconds(traffic * MEMBOUND_FWD_SHARE) + cast_t / 2
        # an embedding's dense weight gradient: once per micro-batch whatever its tokens, vocabulary split over TP
        out["mem_bwd"][:, j] = hw.memory_seconds(traffic * (1 - MEMBOUND_FWD_SHARE) + p.grad_dense_bytes / tp) + cast_t / 2
        for kernel, parts in p.mem_kernels.items():
            if prof.kernel_costs.is_measured(kernel):  # else nothing changes, to the last bit
                moved = (parts[0] / tp + parts[1] / sp_div + parts[2]) * seqs
                extra = prof.kernel_costs.seconds(kernel, moved) - hw.memory_seconds(moved)
                out["mem_fwd"][:, j] += extra * MEMBOUND_FWD_SHARE
                out["mem_bwd"][:, j] += extra * (1 - MEMBOUND_FWD_SHARE)
        if prof.kernel_costs.is_measured("fp8_cast") and expert_cast.any():
            extra = prof.kernel_costs.seconds("fp8_cast", expert_cast) - hw.memory_seconds(expert_cast)
            out["mem_fwd"][:, j] += extra / 2
            out["mem_bwd"][:, j] += extra / 2
        if prof.stack.selective_recompute != "core_attention":
            out["selective_rerun"][:, j] += out["mem_fwd"][:, j]
        elif "core_attn" in prof.stack.recompute_modules:
            out["selective_rerun"][:, j] += out["attn_fwd"][:, j]
        if p.blocks:  # a decoder block; on the head key the MTP modules' blocks, if any
            comm.add(p, out, j, local_moe)
    return out


def _gemm_seconds(prof: CostProfile, g: Gemm, tp, sp, ep, etp, seqs, moe_tokens, load):
    """(seconds of one forward-sized GEMM of `g` per GPU, the bytes its FP8 casts move or None
    when it runs in BF16): each backward GEMM (input gradient, weight gradient) is the same size."""
    scale, m, n, k, groups = _gemm_shape(g, tp, sp, ep, etp, seqs, moe_tokens)
    use8 = prof.fp8 and g.fp8_eligible
    rate8 = use8 and prof.fp8_gemm_rate
    over_f = g.over * scale / (1 + g.bwd_mult)
    one = prof.hw.gemm_seconds(g.flops * scale + over_f, m, n, k, rate8, groups)
    if g.expert:  # the rank holding the busiest expert sets the pace
        one = one * load
    return one, ((m * k + m * n) * groups * prof.cast_bytes if use8 else None)


def _gemm_shape(g: Gemm, tp, sp, ep, etp, seqs, moe_tokens):
    """(scale, m, n, k, groups) of one GEMM per GPU: `scale` the share of its per-sequence FLOPs
    a GPU runs, m x n x k its shape there, `groups` the experts of a grouped GEMM per GPU."""
    if g.moe_part:
        # vlac's runtime routes an MoE layer's own tokens with whole experts (moe_tokens,
        # moe_routing.py); with experts split by width (etp > 1) it gathers the layer over cp
        # and tp: every rank routes the whole micro-batch and runs its slice of the experts
        # (and the shared ones) on it (runtime/parallel/context_parallel.py,
        # tensor_parallel.py); costed as run. Not charged: the activations a gathered layer
        # saves for the whole micro-batch
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
    return scale, m, n, k, groups


class _BlockCollectives:
    """The tensor-, expert- and context-parallel communication of decoder blocks: what one block
    issues is the same for every key (it depends on the degrees and the model's widths), so it is
    computed once per layer_times call, the first time a key needs it; `add` scales it by a
    key's regions and blocks."""

    def __init__(self, prof: CostProfile, tp, sp, cp, mb, ep, etp, seqs, moe_tokens, moe_gathered_cp, load):
        self.prof, self.tp, self.sp, self.cp, self.mb, self.ep, self.etp = prof, tp, sp, cp, mb, ep, etp
        self.seqs, self.moe_tokens, self.moe_gathered_cp, self.load = seqs, moe_tokens, moe_gathered_cp, load
        self.act_msg = seqs * prof.seq_len * prof.hidden * prof.act_bytes  # one full activation
        self._tp = self._moe = self._attention = None

    def add(self, p: LayerProfile, out: dict[str, np.ndarray], j: int, local_moe) -> None:
        """Adds the communication of key `j`'s `p.blocks` blocks to `out` (p.tp_regions counts
        the regions of all of them)."""
        unit, bwd_units = self._tp or self._tp_unit()
        regions = p.tp_regions - np.where(local_moe, p.moe_tp_regions, 0)
        out["tp_fwd"][:, j] = regions * 2 * unit
        out["tp_bwd"][:, j] = regions * bwd_units * unit
        if p.moe:
            cp_gather, ep_fwd, ep_bwd = self._moe or self._moe_exchange()
            out["cp"][:, j] += p.blocks * cp_gather
            out["ep_fwd"][:, j] = p.blocks * ep_fwd
            out["ep_bwd"][:, j] = p.blocks * ep_bwd
        if p.attn_fwd > 0:
            exchange, merge_fwd, merge_bwd = self._attention or self._cp_exchange()
            out["cp"][:, j] += p.blocks * exchange
            out["mem_fwd"][:, j] += p.blocks * merge_fwd
            out["mem_bwd"][:, j] += p.blocks * merge_bwd

    def _tp_unit(self):
        # tensor parallelism: per region, with SP an all-gather and a reduce-scatter forward,
        # backward a reduce-scatter, the output-gradient all-gather and the re-gather of the
        # input for the weight gradient (5 gather-sized units); without SP one all-reduce
        # each way (2 units each)
        self._tp = self.prof.hw.all_gather(self.act_msg, self.tp), np.where(self.sp, 3, 2)
        return self._tp

    def _moe_exchange(self):
        prof, hw, tp, cp, etp = self.prof, self.prof.hw, self.tp, self.cp, self.etp
        # token dispatch and combine: one all-to-all each way, forward and backward;
        # each rank sends its 1/(tp*cp) of the tokens top_k times, or under vlac's runtime
        # the gathered micro-batch (see _gemm_shape; 1/etp of it)
        routed = self.moe_tokens / etp if prof.moe_gathered else self.seqs / tp
        a2a_bytes = routed * prof.seq_len * prof.top_k * prof.hidden * prof.act_bytes
        if prof.moe_gathered:
            # a layer with a capacity that routes its own share of the micro-batch sends only the
            # copies it keeps (at most every copy: runtime/moe.py), else every slot
            slots = capacity_slots(self.mb * prof.seq_len, prof.experts, prof.top_k, prof.capacity_factor)
            a2a_bytes = a2a_bytes * np.where(self.moe_tokens < self.mb, np.minimum(slots, 1.0), slots)
        # what the busiest rank receives
        a2a_bytes = a2a_bytes * self.load
        # the cp gather of a gathered MoE layer's input, forward; its reduce-scatter backward
        cp_gather = np.where(self.moe_gathered_cp & (cp > 1), 2 * hw.all_gather(self.act_msg * cp, cp, tp), 0.0)
        a2a = hw.all_to_all(a2a_bytes, self.ep, etp)
        # expert tensor parallelism gathers the received tokens over etp and scatters
        # the results back (a TP region over the expert activations)
        etp_unit = hw.all_gather(a2a_bytes * etp, etp, 1)
        self._moe = cp_gather, 2 * a2a + 2 * etp_unit, 2 * a2a + 3 * etp_unit
        return self._moe

    def _cp_exchange(self):
        prof, hw, tp, cp = self.prof, self.prof.hw, self.tp, self.cp
        # the K/V exchange of the stack's context-parallel scheme, and a p2p ring's per-step
        # merges on the compute stream (context_parallel_costs); heads split over TP ranks (K/V
        # replicated when tp > kv_heads)
        scheme = prof.stack.context_parallel
        chunk = self.seqs * prof.seq_len * prof.kv_bytes_per_token / np.minimum(tp, prof.kv_heads)
        q_elems = self.seqs * prof.seq_len * prof.q_dim / tp
        merge_fwd, merge_bwd = merge_bytes(scheme, q_elems, chunk / prof.act_bytes, prof.act_bytes, cp)
        self._attention = (exchange_seconds(hw, scheme, chunk, tp, cp), hw.memory_seconds(merge_fwd),
                           hw.memory_seconds(merge_bwd))
        return self._attention


def critical_rank_load(experts: int, expert_load: float, ep) -> np.ndarray:
    """Tokens of the expert-parallel rank holding the busiest expert over a rank's mean, under
    dropless routing with `expert_load` (L) = the busiest expert's tokens over the mean: that
    expert and E/ep - 1 others sharing the rest of the load evenly, so
    [L + (E/ep - 1) (E - L) / (E - 1)] / (E/ep): 1 when one rank holds every expert (the
    total is fixed), L when each rank holds one expert."""
    ep = np.asarray(ep, dtype=float)
    e, load = float(experts), expert_load
    if load == 1.0 or e <= 1:
        return np.ones_like(ep)
    local = e / ep
    return (load + (local - 1) * (e - load) / (e - 1)) / local


def capacity_slots(tokens: np.ndarray, experts: int, top_k: int, capacity_factor: float | None) -> np.ndarray:
    """Slots exchanged per routed copy by vlac's capacity dispatch: each of the E experts
    gets C = ceil(tokens * top_k * capacity_factor / E) slots (runtime/moe.py `capacity`), all
    sent through the all-to-all whether filled or not; 1 when dropless (only routed copies move)."""
    if capacity_factor is None or top_k == 0:
        return np.ones_like(tokens)
    e, k, cf = experts, top_k, round(capacity_factor * 1000)  # the runtime's 1/1000 steps
    return e * np.ceil(tokens * k * cf / (e * 1000)) / (tokens * k)
