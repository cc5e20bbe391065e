"""Memory and step time of one parallel layout, from the cost profile and the hardware.

Overlap assumptions (calibration choices, stated here so they can be argued with):
- tensor-parallel collectives are exposed (no TP comm overlap, Megatron's default);
- expert all-to-alls are exposed (dispatch and combine sit between the router and the experts);
- context-parallel KV exchange hides behind attention compute, only the excess is exposed;
- data-parallel gradient reduction overlaps with the backward pass of the last micro-batch
  (bucketed), ZeRO-3 parameter gathers overlap with each micro-batch's compute, and the
  ZeRO-1/2 parameter all-gather after the optimizer step overlaps with the first forward;
- the optimizer step is memory bound: ~30 bytes read/written per locally owned parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .graph import RECOMPUTE
from .hardware import Hardware
from .plan import Estimate, Layout
from .profile import CostProfile

DP_OVERLAP = 1.0  # fraction of the last micro-batch's backward that gradient reduction can hide behind
ZERO3_OVERLAP = 0.8
OPTIMIZER_BYTES_PER_PARAM = 30.0
BYTES_PER_PARAM = {"weights": 2.0, "gradients": 2.0, "optimizer": 12.0}  # bf16 w/g, fp32 master + Adam m, v


class CostModel:
    def __init__(self, profile: CostProfile, hw: Hardware, seq_len: int, hidden: int, top_k: int,
                 kv_bytes_per_token: float, global_batch_tokens: int, dtype_bytes: int):
        self.p, self.hw = profile, hw
        self.seq_len, self.hidden, self.top_k = seq_len, hidden, top_k
        self.kv_bytes_per_token = kv_bytes_per_token
        self.global_batch_tokens = global_batch_tokens
        self.act_bytes = dtype_bytes
        self.model_flops_per_token = profile.g.flops_per_token
        self._split_cache: dict[tuple[int, int], list[list[tuple]]] = {}

    # ---- stage split --------------------------------------------------------------------------
    def chunks(self, pp: int, v: int) -> list[list[tuple]]:
        """Contiguous layer chunks (pp*v of them) balanced on forward+backward FLOPs; the
        embedding rides with the first chunk and the head+loss with the last."""
        key = (pp, v)
        if key not in self._split_cache:
            self._split_cache[key] = [[self.p.layer_keys[i] for i in c] for c in self.split_indices(pp * v)]
        return self._split_cache[key]

    def split_indices(self, n_chunks: int) -> list[list[int]]:
        costs = []
        for key in self.p.layer_keys:
            nodes = self.p.groups[key]
            costs.append(sum(n.flops_fwd + n.flops_bwd + n.flops_overcompute for n in nodes))
        n = len(costs)
        # linear partition minimising the heaviest chunk (n is the layer count: small)
        prefix = [0.0]
        for c in costs:
            prefix.append(prefix[-1] + c)
        inf = float("inf")
        best = [[inf] * (n + 1) for _ in range(n_chunks + 1)]
        cut = [[0] * (n + 1) for _ in range(n_chunks + 1)]
        best[0][0] = 0.0
        for k in range(1, n_chunks + 1):
            for j in range(k, n + 1):
                for i in range(k - 1, j):
                    w = max(best[k - 1][i], prefix[j] - prefix[i])
                    if w < best[k][j]:
                        best[k][j], cut[k][j] = w, i
        bounds, j = [], n
        for k in range(n_chunks, 0, -1):
            i = cut[k][j]
            bounds.append(list(range(i, j)))
            j = i
        return bounds[::-1]

    # ---- per-rank aggregates (memoised: layouts differ in few of these keys) ------------------
    def _ranks(self, pp: int, v: int) -> list[list[tuple]]:
        chunks = self.chunks(pp, v)
        return [[k for c in chunks[r::pp] for k in c] for r in range(pp)]

    @lru_cache(maxsize=None)
    def _static(self, pp: int, v: int) -> tuple[RankStatic, ...]:
        out = []
        for keys in self._ranks(pp, v):
            p = self.p
            saved = {pol: 0.0 for pol in RECOMPUTE}
            sharded = {pol: 0.0 for pol in RECOMPUTE}
            head = 0.0
            for k in keys:
                if k[0] == "head":
                    head += p.saved[k]["none"]
                    continue
                for pol in RECOMPUTE:
                    use = pol if k[0] == "block" else "none"
                    saved[pol] += p.saved[k][use]
                    sharded[pol] += p.saved_sharded[k][use]
            out.append(RankStatic(
                dense=sum(p.params[k] - p.params_expert[k] for k in keys),
                expert=sum(p.params_expert[k] for k in keys),
                fp8=sum(p.fp8_params[k] for k in keys),
                saved=saved, saved_sharded=sharded, head_saved=head,
                blocks=sum(1 for k in keys if k[0] == "block"),
                moe_blocks=sum(1 for k in keys if k[0] == "block" and p.is_moe[k])))
        return tuple(out)

    @lru_cache(maxsize=None)
    def _dynamic(self, pp: int, v: int, tp: int, cp: int, mb: int, fp8: bool) -> tuple[RankDynamic, ...]:
        out = []
        for keys in self._ranks(pp, v):
            compute = block_fwd = attn = 0.0
            for k in keys:
                t = self.p.times(k, tp, cp, mb, fp8)
                compute += t.fwd + t.bwd
                if k[0] == "block":
                    block_fwd += t.fwd
                    attn += sum(self.hw.attention_seconds((n.flops_fwd + n.flops_bwd) * mb / (tp * cp))
                                for n in self.p.groups[k] if n.kind == "attention")
            out.append(RankDynamic(compute, block_fwd, attn))
        return tuple(out)

    # ---- one layout -------------------------------------------------------------------------------
    def estimate(self, lay: Layout) -> Estimate:
        statics = self._static(lay.pp, lay.virtual_stages)
        memory = max((self._memory(lay, r, st) for r, st in enumerate(statics)), key=lambda m: m["total"])
        time = self._time(lay, statics)
        step = sum(time.values())
        flops = self.model_flops_per_token * self.global_batch_tokens
        peak = self.hw.cluster.gpu.bf16_flops
        return Estimate(lay, memory, time, step, memory["total"], memory["total"] <= self.hw.usable_memory,
                        flops, lay.world, peak, self.global_batch_tokens)

    def memory_only(self, lay: Layout) -> float:
        statics = self._static(lay.pp, lay.virtual_stages)
        return max(self._memory(lay, r, st)["total"] for r, st in enumerate(statics))

    def _memory(self, lay: Layout, rank: int, st: RankStatic) -> dict[str, float]:
        dense, expert = st.dense / lay.tp, st.expert / lay.ep
        d_dense = lay.dp * lay.cp
        d_expert = max(1, d_dense // lay.ep)
        w, g, o = BYTES_PER_PARAM["weights"], BYTES_PER_PARAM["gradients"], BYTES_PER_PARAM["optimizer"]
        zd = (d_dense if lay.zero >= 3 else 1, d_dense if lay.zero >= 2 else 1, d_dense if lay.zero >= 1 else 1)
        ze = (d_expert if lay.zero >= 3 else 1, d_expert if lay.zero >= 2 else 1, d_expert if lay.zero >= 1 else 1)
        mem = {
            "weights": dense * w / zd[0] + expert * w / ze[0],
            "gradients": dense * g / zd[1] + expert * g / ze[1],
            "optimizer": dense * o / zd[2] + expert * o / ze[2],
            "fp8_cache": st.fp8 / lay.tp if lay.fp8 else 0.0,
        }
        pol = lay.recompute
        sharded = st.saved_sharded[pol]
        rest = st.saved[pol] - sharded
        per_micro = sharded / lay.tp + rest / (lay.tp if lay.sequence_parallel else 1)
        per_micro *= lay.microbatch_size / lay.cp
        head = st.head_saved / lay.tp * lay.microbatch_size / lay.cp  # vocab-parallel logits, one in flight
        mem["activations"] = per_micro * self._in_flight(lay, rank) + head
        mem["total"] = sum(mem.values())
        return mem

    @staticmethod
    def _in_flight(lay: Layout, rank: int) -> float:
        """Micro-batches whose activations a pipeline rank holds at its peak."""
        m, p, v = lay.num_microbatches, lay.pp, lay.virtual_stages
        if p == 1:
            return 1.0
        if lay.schedule == "gpipe":
            return float(m)
        if lay.schedule == "interleaved_1f1b" and v > 1:
            warmup = min(m * v, (p - rank - 1) * 2 + (v - 1) * p + 1)
            return warmup / v
        return float(min(m, p - rank))

    def _time(self, lay: Layout, statics: tuple[RankStatic, ...]) -> dict[str, float]:
        hw = self.hw
        tokens_local = lay.microbatch_size * self.seq_len / lay.cp
        act_msg = tokens_local * self.hidden * self.act_bytes
        # per decoder layer and micro-batch: Megatron TP(+SP) runs 2 gathers + 2 reduce-scatters
        # forward and the same backward (= 4 all-reduces of the activation)
        tp_layer = 4 * hw.all_reduce(act_msg, lay.tp)
        a2a = tokens_local / (lay.tp if lay.sequence_parallel else 1) * self.top_k * self.hidden * self.act_bytes
        ep_layer = 4 * hw.all_to_all(a2a, lay.ep, stride=lay.tp) if lay.ep > 1 else 0.0
        kv = tokens_local * self.kv_bytes_per_token / lay.tp
        ring = 3 * (lay.cp - 1) * hw.p2p(kv, across_nodes=lay.tp * lay.cp > hw.node_size) if lay.cp > 1 else 0.0
        dyn = self._dynamic(lay.pp, lay.virtual_stages, lay.tp, lay.cp, lay.microbatch_size, lay.fp8)
        worst, worst_sum = None, -1.0
        for st, d in zip(statics, dyn):
            row = (d.compute, d.block_fwd if lay.recompute == "full" else 0.0, tp_layer * st.blocks,
                   ep_layer * st.moe_blocks, max(0.0, ring * st.blocks - d.attention))
            if sum(row) > worst_sum:
                worst, worst_sum = row, sum(row)
        per_micro = worst_sum
        m = lay.num_microbatches
        if lay.pp > 1:
            bubble_units = (lay.pp - 1) / (lay.virtual_stages if lay.schedule == "interleaved_1f1b" else 1)
            across = lay.tp * lay.cp * lay.dp >= hw.node_size
            p2p = 2 * hw.p2p(act_msg / (lay.tp if lay.sequence_parallel else 1), across_nodes=across)
        else:
            bubble_units, p2p = 0.0, 0.0
        out = {
            "compute": worst[0] * m,
            "recompute": worst[1] * m,
            "tp_comm": worst[2] * m,
            "ep_comm": worst[3] * m,
            "cp_comm": worst[4] * m,
            "pp_bubble": per_micro * bubble_units,
            "pp_p2p": p2p * (m + bubble_units),
        }
        out["dp_comm"], out["optimizer"] = self._dp_and_optimizer(lay, statics, per_micro, worst[0])
        return out

    def _dp_and_optimizer(self, lay: Layout, statics: tuple[RankStatic, ...], per_micro: float, compute: float):
        hw = self.hw
        worst_dense = max(st.dense for st in statics) / lay.tp
        worst_expert = max(st.expert for st in statics) / lay.ep
        d_dense = lay.dp * lay.cp
        d_expert = max(1, d_dense // lay.ep)
        grad = BYTES_PER_PARAM["gradients"]
        if lay.zero == 0:
            reduce = hw.all_reduce(worst_dense * grad, d_dense, lay.tp) + hw.all_reduce(worst_expert * grad, d_expert, lay.tp * lay.ep)
        else:
            reduce = hw.reduce_scatter(worst_dense * grad, d_dense, lay.tp) + hw.reduce_scatter(worst_expert * grad, d_expert, lay.tp * lay.ep)
        bwd_last = compute / 2  # backward is about two thirds of compute; half is a conservative window
        exposed = max(0.0, reduce - DP_OVERLAP * bwd_last)
        gather = hw.all_gather(worst_dense * BYTES_PER_PARAM["weights"], d_dense, lay.tp) + \
            hw.all_gather(worst_expert * BYTES_PER_PARAM["weights"], d_expert, lay.tp * lay.ep)
        if lay.zero >= 3:
            exposed += lay.num_microbatches * max(0.0, 2 * gather - ZERO3_OVERLAP * per_micro)
        elif lay.zero >= 1:
            exposed += max(0.0, gather - per_micro)
        owned = worst_dense / (d_dense if lay.zero >= 1 else 1) + worst_expert / (d_expert if lay.zero >= 1 else 1)
        return exposed, hw.memory_seconds(owned * OPTIMIZER_BYTES_PER_PARAM)


@dataclass(frozen=True)
class RankStatic:
    """What a pipeline rank holds, independent of tp/cp/micro-batch: parameters and the
    activation bytes its layers save per sequence under each recompute policy."""

    dense: float
    expert: float
    fp8: float
    saved: dict[str, float]
    saved_sharded: dict[str, float]
    head_saved: float
    blocks: int
    moe_blocks: int


@dataclass(frozen=True)
class RankDynamic:
    compute: float  # forward + backward seconds per micro-batch
    block_fwd: float  # forward seconds of its decoder blocks (what full recompute repeats)
    attention: float  # attention seconds (what context-parallel KV exchange hides behind)
