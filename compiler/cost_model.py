"""Memory and step time of many layouts at once, from the cost profile and the hardware.

Layouts arrive as the columns of a `Space` and are costed together as [rows, pipeline ranks,
recompute policies] arrays, every pipeline shape (pp, v) in one pass, the rank axis padded to the
largest pp and the padding masked (vlac.compiler.cost_arrays). Each pipeline rank takes the
recompute choice with the least recompute time that fits its memory, full recompute of only
some of its blocks included where the stack does that (vlac.compiler.recompute_choice); a rank's
time grows with its recompute, and the step time follows the ranks' times monotonically, so that
choice per rank is optimal for the step too.

Overlap and scheduling assumptions (calibration choices; `benchmarks/fidelity.py` checks them
against published runs with one set of figures for all). Which overlaps a run has is the
software stack's (spec.stack, profile.stack): without an overlap its communication is exposed
whole.
- Tensor-parallel collectives (`tp_comm_overlap`): TP_EXPOSED of their time is exposed. Megatron overlaps the
  sequence-parallel re-gather in backward with the input-gradient GEMM, and NeMo's production
  recipes pipeline the remaining all-gathers/reduce-scatters with their GEMMs (userbuffers,
  `tp_comm_overlap`); the first chunk of each gather and the last of each scatter stay exposed.
- Expert all-to-alls: EP_EXPOSED of their time is exposed: dispatch and combine sit between the
  router and the experts on the compute's critical path. With the stack's `ep_comm_overlap`
  (Megatron-Core's overlap_moe_expert_parallel_comm) the steady 1F1B phase runs each all-to-all
  beside a phase of the other micro-batch's compute and exposes only its excess; the warm-up and
  cool-down micro-batches keep EP_EXPOSED (vlac.compiler.ep_overlap).
- Context-parallel K/V exchange overlaps with the attention of the previous ring step; only the
  excess over attention time is exposed.
- Data parallelism (`grad_reduce_overlap`, `param_gather_overlap`), rank by rank (each rank hides its own traffic behind its own compute, so more
  work on one rank never hides more than it adds): gradient reduction overlaps with the rank's
  last backward (bucketed, Megatron `overlap_grad_reduce`; interleaved ranks reduce each chunk
  after its last backward, so chunk 0's 1/v is exposed behind 1/v of the backward); ZeRO-1/2
  parameter all-gathers after the optimizer step overlap with the rank's first forward
  (`overlap_param_gather`); ZeRO-2 reduce-scatters every micro-batch behind its backward (the
  last at the step's end); ZeRO-3 gathers parameters before each micro-batch's forward and
  backward and reduce-scatters after, behind that micro-batch's compute on the rank: it
  lengthens the rank's micro-batch, bubble included. The step ends when the last rank's
  exposed tail does.
- Pipeline: bubble (p-1)*t for 1F1B and GPipe, (p-1)*t/v interleaved (Narayanan et al. 2021),
  and (p-1)*(t - 2*t_W) for zero-bubble ZB-H1 (Qi et al. 2023), t_W the weight-gradient time;
  with unequal ranks, the sum over the ranks other than the slowest of their t (or t - 2*t_W),
  which `schedule_sim` reproduces pass by pass (exactly for balanced ranks, as an upper bound
  otherwise);
  activations in flight per rank: p - rank (1F1B, ZB-H1), Megatron's interleaved warm-up
  ((p-rank-1)*2 + (v-1)*p + 1 chunks), m (GPipe), times the rank's mean chunk; the output head's
  (on the last chunk, whose forward is followed by its own backward) one micro-batch's worth
  but under GPipe. Stage-to-stage sends (`pp_p2p_overlap`): a
  forward and a backward send per micro-batch on the critical path when blocking; overlapped
  (Megatron's `overlap_p2p_comm`, sends posted while the next micro-batch computes), only the
  p-1 fill and p-1 drain transfers stay exposed.
- Optimizer: memory bound, ~30 bytes read and written per locally owned parameter (Adam: FP32
  master, m, v read and written, the BF16 gradient read, the BF16 weight written, the norm).
- Memory per GPU: BF16 weights (2 B) and gradients (2 B), FP32 master and Adam moments (12 B),
  sharded by ZeRO level; FP8 weight copies (plain and transposed, 2 B) for FP8 GEMMs; saved
  activations times micro-batches in flight; a working set of one decoder layer's activations
  (the layer in backward, or being recomputed); communication buffers (two DP gradient buckets
  of up to 40M elements, double-buffered TP gathers, all-to-all send/receive buffers); ZeRO-3
  prefetch of the next layer's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import RECOMPUTE
from .hardware import Hardware
from .profile import CostProfile
from .context_parallel_costs import FORWARD_SHARE as CP_FORWARD_SHARE
from .data_parallel import OVERLAP_SLOWDOWN, exposed_data_parallel, hide as _hide, optimizer_seconds
from .cost_arrays import PipelineShapes, in_flight, key_sum, rank_sum, row_chunks
from .ep_overlap import overlapped_ep, unpaired_share
from .recompute_choice import choose, forced as forced_choice
from .search_space import SCHEDULE_CODES, Space

# Exposed shares of TP and EP communication. Neither is published directly: NVIDIA's TP-overlap
# notes report most of the gathers hidden, and 0.20 (the all-runs fit of benchmarks/fidelity_loo.py,
# grid 0.2-0.5; 0.35 before) keeps the exposed TP time of the cited TP4/TP8 runs at a few % of their
# step; 0.75 reproduces the one cited cross-node EP run (Qwen3, EP32) within 7 %. Moving
# TP_EXPOSED by 0.1 moves the TP cases by at most 2-3 %; EP_EXPOSED by 0.1 moves the Qwen3 case by
# 5-6 % (its all-to-alls are half of its step).
TP_EXPOSED = 0.20
EP_EXPOSED = 0.75
# gradients 2 B on megatron-te too: Megatron-Core's fp32 `main_grad` (grad_reduce_in_fp32, NeMo's
# MegatronMixedPrecision default) would be 4 B, but NeMo's performance scripts that produced the cited
# rows set `grad_reduce_in_fp32 = False` on the plugin and the DDP config for FP8 runs (with 4 B the
# llama3-8b FP8 row, which ran without recompute, would not fit without it)
BYTES_PER_PARAM = {"weights": 2.0, "gradients": 2.0, "optimizer": 12.0, "fp8_cache": 2.0}
DP_BUCKET_ELEMENTS = 40e6  # Megatron's default gradient bucket; two in flight, BF16, at most the local gradient

TIME_KEYS = ("compute", "elementwise", "recompute", "tp_comm", "ep_comm", "cp_comm", "pp_bubble", "pp_p2p",
             "dp_comm", "optimizer")
MEMORY_KEYS = ("weights", "gradients", "optimizer", "fp8_cache", "activations", "working", "comm_buffers")
# a micro-batch's parts per layer that the step sums over a rank's layers (the first five: its time)
RANK_PARTS = ("compute", "elementwise", "tp_comm", "ep_comm", "cp_comm", "fwd", "bwd", "wgrad", "ep_unpaired")
DEGREES = ("dp", "tp", "cp", "ep", "etp", "mb", "m", "pp", "v")  # a pass's float columns ([rows, 1] each)
INTERLEAVED, GPIPE, ZERO_BUBBLE = (SCHEDULE_CODES.index(s) for s in ("interleaved_1f1b", "gpipe", "zero_bubble"))


@dataclass
class Evaluation:
    """Per-row results. `fits` marks rows with a recompute choice that fits every rank;
    `timed` the rows whose step time was computed (time columns are NaN elsewhere)."""

    space: Space
    peak: np.ndarray
    fits: np.ndarray
    timed: np.ndarray
    step: np.ndarray
    policy: np.ndarray  # [rows, max pp] policy index per rank, -1 past the last rank
    time: dict[str, np.ndarray]
    memory: dict[str, np.ndarray]  # components on the rank with the peak
    # with `detail`: per pipeline rank, one micro-batch's forward, backward (with recompute) and
    # weight-gradient seconds, and the memory components ([rows, max pp] / [rows, max pp, parts])
    rank_time: dict[str, np.ndarray] | None = None
    rank_memory: np.ndarray | None = None
    # [rows, max pp] blocks each rank recomputes in full (0 under none or selective, -1 past the
    # last rank); None: every block of a `full` rank (evaluations merged without it)
    layers: np.ndarray | None = None


class CostModel:
    def __init__(self, profile: CostProfile, hw: Hardware, global_batch_tokens: int):
        self.p, self.hw = profile, hw
        self.global_batch_tokens = global_batch_tokens
        prof = profile.profiles
        self.params_dense = np.array([q.params_dense for q in prof])
        self.params_expert = np.array([q.params_expert for q in prof])
        self.params_fp8 = np.array([q.params_fp8 for q in prof])
        # frozen parameters (`freeze: true`, runtime/freeze.py) hold weights but no gradients or optimizer state
        self.trainable_dense = self.params_dense - np.array([q.params_frozen_dense for q in prof])
        self.trainable_expert = self.params_expert - np.array([q.params_frozen_expert for q in prof])
        # [K, 3 policies] saved bytes per sequence: TP-sharded, SP-split, whole
        self.saved_sh, self.saved_sp, self.saved_whole = (
            np.array([[q.saved[pol][part] for pol in RECOMPUTE] for q in prof]) for part in range(3))
        self.is_block = np.array([q.kind == "block" for q in prof])
        self.is_head = np.array([q.kind == "head" for q in prof], dtype=float)
        # what a pass sums per rank over its layers (PipelineShapes.per_rank), side by side: one sum for all
        self.rank_figures = np.stack([self.params_dense, self.params_expert, self.params_fp8, self.trainable_dense,
                                      self.trainable_expert, self.is_block.astype(float)], axis=-1)  # [K, 6]
        self.max_block_params = max((q.params_dense + q.params_expert for q in prof if q.kind == "block"), default=0.0)
        self._compositions: dict[tuple[int, int], tuple[list[list[int]], np.ndarray]] = {}
        self._chunks: dict[tuple[int, bool], list[list[int]]] = {}  # interleaved shapes of one pp*v share their chunks
        self._stage_weights: tuple[list[float], list[int]] | None = None  # CostProfile.stage_weights()

    # ---- pipeline shape ---------------------------------------------------------------------------
    def stage_weights(self) -> tuple[list[float], list[int]]:
        """CostProfile.stage_weights, read once per model: the fast path splits it ~25 ways and
        its step bound reads the decoder positions too."""
        if self._stage_weights is None:
            self._stage_weights = self.p.stage_weights()
        return self._stage_weights

    def composition(self, pp: int, v: int) -> tuple[list[list[int]], np.ndarray]:
        """The chunks (layer positions) of a (pp, v) split and how many layers of each key each
        pipeline rank holds ([pp, keys]); chunk c runs on rank c % pp."""
        key = (pp, v)
        if key not in self._compositions:
            split = (pp * v, v > 1)
            if split not in self._chunks:
                self._chunks[split] = self.p.stage_chunks(*split, weights=self.stage_weights())
            chunks = self._chunks[split]
            # each position's key counted on its rank (chunk c runs on rank c % pp), in plain
            # Python: a split holds a few dozen positions, fewer than numpy's per-call overhead
            sequence, counts = self.p.sequence, [[0] * self.p.n_keys for _ in range(pp)]
            for c, chunk in enumerate(chunks):
                on_rank = counts[c % pp]
                for position in chunk:
                    on_rank[sequence[position]] += 1
            self._compositions[key] = (chunks, np.array(counts, dtype=float))
        return self._compositions[key]

    def p2p_seconds(self, mb, cp, tp, sp, dp, pp, m) -> np.ndarray:
        """Exposed stage-to-stage sends of a step, per row (1-D arrays; sp boolean): a forward and
        a backward send per micro-batch when blocking, only the pp-1 fill and pp-1 drain
        transfers when overlapped (module docstring); none without a pipeline. It reads only a
        layout's combination and pipeline, so the fast path's lower bound
        (vlac.search.step_bound) adds it exactly."""
        hw, p = self.hw, self.p
        # the step bound passes every group of a depth (tens of thousands of rows): in place,
        # in the order of `mb / cp * seq_len * hidden * act_bytes / (tp under sp)`, the same bits
        nbytes = mb / cp
        for factor in (p.seq_len, p.hidden, p.act_bytes):
            nbytes *= factor
        nbytes /= np.where(sp, tp, 1.0)
        # late fusion: the media entries go along, whole on every tp and cp rank (charged at
        # every boundary; the runtime stops after the last stage that reads them)
        if p.media_entries:
            nbytes += mb * p.media_entries * p.hidden * p.act_bytes
        across = tp * cp * dp >= hw.node_size
        sends = (pp - 1) if p.stack.pp_p2p_overlap else (m + pp - 1)
        seconds = hw.p2p(nbytes, across)
        seconds *= 2
        seconds *= sends
        return np.where(pp > 1, seconds, 0.0)

    # ---- evaluation -------------------------------------------------------------------------------
    def evaluate(self, space: Space, allowed=(0, 1, 2), forced: np.ndarray | None = None,
                 time_all: bool = False, detail: bool = False, forced_layers: np.ndarray | None = None) -> Evaluation:
        """Cost every row. `allowed`: recompute policy indices the search may use; `forced`
        ([rows, pp] policy indices) fixes them per rank instead, and `forced_layers` ([rows, pp])
        how many blocks a `full` rank recomputes (negative or None: all). Rows that do not fit under any
        allowed choice are pruned before their step time is computed unless `time_all`.
        `detail` also fills the memory and time breakdowns (else they stay NaN)."""
        c = space.cols
        n = len(space)
        pmax = int(c["pp"].max()) if n else 1
        ev = Evaluation(space, np.full(n, np.inf), np.zeros(n, bool), np.zeros(n, bool), np.full(n, np.nan),
                        np.full((n, pmax), -1, np.int64), {k: np.full(n, np.nan) for k in TIME_KEYS},
                        {k: np.full(n, np.nan) for k in MEMORY_KEYS}, layers=np.full((n, pmax), -1.0))
        if detail:
            ev.rank_time = {k: np.full((n, pmax), np.nan) for k in ("fwd", "bwd", "wgrad")}
            ev.rank_memory = np.full((n, pmax, len(MEMORY_KEYS)), np.nan)
        if n == 0:
            return ev
        combos = np.stack([c["tp"], c["sp"], c["cp"], c["mb"], c["ep"], c["etp"]], axis=1).astype(np.int64)
        key = np.zeros(n, np.int64)
        for j in range(combos.shape[1]):  # mixed-radix code: a 1-D unique is far faster than a row-wise one
            key = key * (int(combos[:, j].max()) + 1) + combos[:, j]
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        uniq = combos[first]
        inv = inv.reshape(-1)
        lt = self.p.times(uniq[:, 0], uniq[:, 1].astype(bool), uniq[:, 2], uniq[:, 3], uniq[:, 4], uniq[:, 5])
        per_key = self._per_key(lt, uniq)
        # every per-key figure the passes sum over a rank's layers, side by side: one sum for all;
        # last the head's saved bytes (times its 0/1 flag: the same products as its counts masked)
        per_key["stacked"] = np.concatenate([per_key["act"], per_key["recompute"]]
                                            + [per_key[k][..., None] for k in RANK_PARTS]
                                            + [per_key["act"] * self.is_head[None, :, None]], axis=-1)
        allowed_mask = np.zeros(3, bool)
        allowed_mask[list(allowed)] = True
        for rows in row_chunks(c["pp"]):  # every pipeline shape in one pass, padded to its largest pp
            f = None if forced is None else (forced[rows], None if forced_layers is None else forced_layers[rows])
            self._evaluate_rows(ev, rows, inv[rows], per_key, allowed_mask, f, time_all, detail)
        return ev

    def _per_key(self, lt: dict[str, np.ndarray], uniq: np.ndarray) -> dict[str, np.ndarray]:
        """Per unique (tp, sp, cp, mb, ep, etp) and key: the parts of a micro-batch's time and
        the activation bytes saved per micro-batch under each policy ([U, K] or [U, K, 3])."""
        tp, sp, cp, mb = (uniq[:, i].astype(float)[:, None] for i in range(4))
        block = self.is_block[None, :]
        # a p2p ring hides its exchange behind the attention; an all-gather runs before it
        scheme = self.p.stack.context_parallel
        cp_exposed = lt["cp"] if scheme == "all_gather" else _hide(lt["cp"], lt["attn_fwd"] + lt["attn_bwd"])
        tp_exposed = TP_EXPOSED if self.p.stack.tp_comm_overlap else 1.0
        tp_x = tp_exposed + OVERLAP_SLOWDOWN * (1 - tp_exposed)  # exposed share, hidden share's slowdown
        ep_x = EP_EXPOSED + OVERLAP_SLOWDOWN * (1 - EP_EXPOSED)
        ep_fwd, ep_bwd = ep_x * lt["ep_fwd"], ep_x * lt["ep_bwd"]
        ep_unpaired = np.zeros_like(ep_fwd)
        if self.p.stack.ep_comm_overlap:
            # steady 1F1B phase: each all-to-all behind the other micro-batch's compute, never
            # more exposed than without the overlap; unpaired micro-batches pay the difference
            over_fwd, over_bwd = overlapped_ep(lt)
            plain = ep_fwd + ep_bwd
            ep_fwd, ep_bwd = np.minimum(over_fwd, ep_fwd), np.minimum(over_bwd, ep_bwd)
            ep_unpaired = plain - ep_fwd - ep_bwd
        fwd_comm = tp_x * lt["tp_fwd"] + ep_fwd + cp_exposed * CP_FORWARD_SHARE[scheme]
        fwd = lt["gemm_fwd"] + lt["attn_fwd"] + lt["mem_fwd"]
        recompute = np.stack([np.zeros_like(fwd), np.where(block, lt["selective_rerun"], 0.0),
                              np.where(block, fwd + fwd_comm, 0.0)], axis=-1)
        sp_div = np.where(sp.astype(bool), tp, 1.0)
        seqs = mb / cp
        act = (self.saved_sh[None] / tp[..., None] + self.saved_sp[None] / sp_div[..., None]
               + self.saved_whole[None]) * seqs[..., None]
        return {
            "compute": lt["gemm_fwd"] + lt["gemm_bwd"] + lt["attn_fwd"] + lt["attn_bwd"],
            "elementwise": lt["mem_fwd"] + lt["mem_bwd"],
            "fwd": fwd + fwd_comm,
            "bwd": lt["gemm_bwd"] + lt["attn_bwd"] + lt["mem_bwd"],
            "wgrad": lt["gemm_wgrad"],
            "tp_comm": tp_x * (lt["tp_fwd"] + lt["tp_bwd"]),
            "ep_comm": ep_fwd + ep_bwd,
            "ep_unpaired": ep_unpaired,
            "cp_comm": cp_exposed,
            "recompute": recompute,
            "act": act,
        }

    def _evaluate_rows(self, ev: Evaluation, idx, u, pk, allowed_mask, forced, time_all, detail) -> None:
        """Cost rows `idx` (any pipeline shapes) in one pass: [rows, ranks(, policies)] arrays
        padded to the largest pp among them, the padding masked (vlac.compiler.cost_arrays)."""
        hw, c = self.hw, ev.space.cols
        shapes = PipelineShapes(self, c["pp"][idx], c["v"][idx])
        width, real, counts = shapes.width, shapes.mask, shapes.counts
        # what depends only on the (tp, sp, cp, mb, ep, etp) combination and the pipeline shape:
        # once per (combination, shape) pair
        pairs, pair = np.unique(u * len(counts) + shapes.of_row, return_inverse=True)
        pair = pair.reshape(-1)
        pu, ps = pairs // len(counts), pairs % len(counts)
        summed = key_sum(pk["stacked"][pu], counts[ps])  # [pairs, ranks, figures] (evaluate)
        act_p, rc_p = summed[..., 0:3], summed[..., 3:6]  # per micro-batch, per policy
        head_p = summed[..., -3:]  # the head's share of act_p
        rank_p = {k: summed[..., 6 + i] for i, k in enumerate(RANK_PARTS)}  # [pairs, ranks]
        present = (counts[ps] > 0) & self.is_block[None, None, :]
        working_p = np.max(np.where(present, pk["act"][pu][:, None, :, 0], 0.0), axis=2)  # [pairs, ranks]

        # the degrees as float columns of one [rows, 9] array (one conversion for all; gathered
        # first: a large space's columns are many passes long)
        cols = np.stack([c[k][idx] for k in DEGREES]).astype(float)  # [9, rows]: each column contiguous
        col = {k: cols[j][:, None] for j, k in enumerate(DEGREES)}
        zero = c["zero"][idx][:, None]
        gathered = (~c["raf"][idx])[:, None]  # zero3 without reshard: weights gathered at the peak
        sched = c["sched"][idx]
        tp, cp, ep, etp, dp, m = col["tp"], col["cp"], col["ep"], col["etp"], col["dp"], col["m"]
        d_dense = dp * cp
        d_expert = d_dense * tp / (ep * etp)

        # ---- memory [rows, ranks, policies] -----------------------------------------------------
        figures = shapes.per_rank(self.rank_figures)  # [6 (rank_figures), rows, ranks]
        dense, expert = figures[0], figures[1]
        fp8 = figures[2] if self.p.fp8 else np.zeros_like(dense)
        trained = (figures[3], figures[4])  # frozen: no gradient, no update
        dense_l = dense / tp
        expert_l = expert / (ep * etp)
        B = BYTES_PER_PARAM
        shard = lambda level: (np.where(zero >= level, d_dense, 1.0), np.where(zero >= level, d_expert, 1.0))  # noqa: E731
        w3, g2, o1 = shard(3), shard(2), shard(1)
        train_d, train_e = trained[0] / tp, trained[1] / (ep * etp)
        mem = {
            "weights": B["weights"] * np.where(gathered, dense_l + expert_l, dense_l / w3[0] + expert_l / w3[1]),
            "gradients": B["gradients"] * (train_d / g2[0] + train_e / g2[1]),
            "optimizer": B["optimizer"] * (train_d / o1[0] + train_e / o1[1]),
            "fp8_cache": B["fp8_cache"] * fp8 / tp / np.where(gathered, 1.0, w3[0]),
        }
        held = in_flight(sched, m, col["pp"], col["v"], width, GPIPE, INTERLEAVED)  # [rows, ranks]
        working = working_p[pair]
        a2a_bytes = col["mb"] / cp / tp * self.p.seq_len * self.p.top_k * self.p.hidden * self.p.act_bytes
        act_msg = col["mb"] / cp * self.p.seq_len * self.p.hidden * self.p.act_bytes
        buckets = 2 * np.minimum(DP_BUCKET_ELEMENTS, dense_l + expert_l) * B["gradients"]  # [rows, ranks]
        buffers = (np.where(d_dense > 1, buckets, 0.0) + np.where(tp > 1, 2 * act_msg, 0.0)
                   + np.where(ep > 1, 2 * a2a_bytes * etp, 0.0)
                   + np.where(zero >= 3, 2 * self.max_block_params / tp * B["weights"], 0.0))
        static = mem["weights"] + mem["gradients"] + mem["optimizer"] + mem["fp8_cache"] + working + buffers
        # the output head (logits, loss, MTP modules) sits on the last chunk, whose forward is
        # followed by its own backward before the next micro-batch reaches it (1F1B and Megatron's
        # interleaved steady state): one micro-batch of it in flight; all m under GPipe
        head_held = np.where(sched[:, None] == GPIPE, held, np.minimum(held, 1.0))
        act_held = act_p[pair] * held[:, :, None] - head_p[pair] * (held - head_held)[:, :, None]
        total = static[:, :, None] + act_held  # [rows, ranks, 3]
        usable = hw.usable_memory
        rc_all = rc_p[pair]  # [rows, ranks, 3] recompute seconds per micro-batch, full on every block
        blocks = figures[5]  # [rows, ranks]
        if forced is not None:
            given = [np.zeros(real.shape, np.int64), np.full(real.shape, -1.0)]
            for out, a in zip(given, forced):
                if a is not None:
                    w = min(width, a.shape[1])
                    out[:, :w] = a[:, :w]
            choice = forced_choice(total, rc_all, blocks, usable, np.where(real, given[0], 0), given[1])
        else:
            choice = choose(total, rc_all, blocks, usable, allowed_mask, self.p.stack.partial_recompute)
        pol, chosen_total = choice.policy, choice.total
        row_fits = (choice.fits | ~real).all(axis=1)
        peak_rank = np.where(real, chosen_total, -np.inf).argmax(axis=1)
        rows = np.arange(len(idx))
        ev.peak[idx] = chosen_total[rows, peak_rank]
        ev.fits[idx] = row_fits
        ev.policy[idx, :width] = np.where(real, pol, -1)
        ev.layers[idx, :width] = np.where(real, choice.layers, -1.0)
        chosen_act = chosen_total - static  # the saved activations of the chosen recompute
        if detail:
            pick = lambda a: a[rows, peak_rank]  # noqa: E731
            for k in ("weights", "gradients", "optimizer", "fp8_cache"):
                ev.memory[k][idx] = pick(np.broadcast_to(mem[k], chosen_total.shape))
            ev.memory["activations"][idx] = pick(chosen_act)
            ev.memory["working"][idx] = pick(working)
            ev.memory["comm_buffers"][idx] = pick(buffers)
            per_rank = [mem[k] for k in ("weights", "gradients", "optimizer", "fp8_cache")] + [
                chosen_act, working, np.broadcast_to(buffers, working.shape)]
            stacked = np.stack([np.broadcast_to(a, working.shape) for a in per_rank], axis=-1)
            ev.rank_memory[idx, :width] = np.where(real[:, :, None], stacked, np.nan)

        # ---- time (rows that fit, or all when asked) ---------------------------------------------
        keep = np.ones(len(idx), bool) if time_all else row_fits
        if not keep.any():
            return
        sel = np.nonzero(keep)[0]
        pair, idx, real, rc = pair[sel], idx[sel], real[sel], choice.recompute[sel]
        cols = cols[:, sel]
        col = {k: cols[j][:, None] for j, k in enumerate(DEGREES)}
        tp, cp, ep, etp, dp, m = col["tp"], col["cp"], col["ep"], col["etp"], col["dp"], col["m"]
        d_dense, d_expert, zero, sched = d_dense[sel], d_expert[sel], zero[sel], sched[sel]
        dense, expert, trained = dense[sel], expert[sel], (trained[0][sel], trained[1][sel])
        raf = c["raf"][idx]
        parts = RANK_PARTS[:5]
        # the expert all-to-alls of the micro-batches outside the steady 1F1B phase (ep_overlap)
        unpaired = unpaired_share(held[sel], m) * rank_p["ep_unpaired"][pair]
        base = sum(rank_p[k] for k in parts)[pair] + unpaired
        fwd_r = rank_p["fwd"][pair]
        # data-parallel traffic, rank by rank: what every micro-batch issues (ZeRO-2/3) lengthens
        # that rank's own micro-batch; what a step issues once is hidden behind the rank's own
        # first forward / last backward (never behind another rank's compute)
        dp_mb, dp_start, dp_end = exposed_data_parallel(hw, self.p.stack, dense, expert, trained, col, d_dense,
                                                        d_expert, zero, raf, col["v"], fwd_r, base + rc - fwd_r)
        t_rank = np.where(real, base + rc + dp_mb, 0.0)
        crit = np.where(real, t_rank, -np.inf).argmax(axis=1)
        rows = np.arange(len(sel))
        t_max = t_rank[rows, crit]
        at = lambda name: rank_p[name][pair, crit]  # noqa: E731  the critical rank's share
        mm, pp, v = m[:, 0], col["pp"][:, 0], col["v"][:, 0]
        # fill and drain: every other rank's micro-batch lies once on the critical path ((p-1)*t
        # when the ranks are equal); zero-bubble hides two weight-gradient passes of each
        others = rank_sum(t_rank) - t_max
        wgrad = rank_p["wgrad"][pair]
        others_zb = rank_sum(np.maximum(0.0, t_rank - 2 * wgrad)) - np.maximum(0.0, t_max - 2 * wgrad[rows, crit])
        bubble = np.where(sched == ZERO_BUBBLE, others_zb, np.where(sched == INTERLEAVED, others / v, others))
        bubble = np.where(pp > 1, bubble, 0.0)
        p2p = self.p2p_seconds(col["mb"][:, 0], cp[:, 0], tp[:, 0], c["sp"][idx], dp[:, 0], pp, mm)
        rc_crit = rc[rows, crit]
        dp_exposed = mm * dp_mb[rows, crit] + dp_start.max(axis=1) + dp_end.max(axis=1)
        optimizer = optimizer_seconds(hw, trained[0].max(axis=1), trained[1].max(axis=1), col, d_dense, d_expert, zero)
        ev.step[idx] = mm * (t_max - dp_mb[rows, crit]) + bubble + p2p + dp_exposed + optimizer
        ev.timed[idx] = True
        if detail:
            t = ev.time
            for k in parts:
                t[k][idx] = mm * at(k)
            t["ep_comm"][idx] += mm * unpaired[rows, crit]
            t["recompute"][idx] = mm * rc_crit
            t["pp_bubble"][idx] = bubble
            t["pp_p2p"][idx] = p2p
            t["dp_comm"][idx] = dp_exposed
            t["optimizer"][idx] = optimizer
            masked = lambda a: np.where(real, a, np.nan)  # noqa: E731
            ev.rank_time["fwd"][idx, :width] = masked(fwd_r)
            ev.rank_time["bwd"][idx, :width] = masked(t_rank - fwd_r)  # the rest of the micro-batch: backward, recompute, comm
            ev.rank_time["wgrad"][idx, :width] = masked(wgrad)
