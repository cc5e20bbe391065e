"""Every legal layout of an experiment on a cluster, as columns of numpy arrays.

A layout fixes the degrees (dp, tp with or without sequence parallelism, cp, pp, ep, etp), the
ZeRO level, the micro-batch size (and so the micro-batch count) and the pipeline schedule with
its virtual stages. Recompute is chosen per pipeline stage by the cost model (the cheapest
policy that fits is provably best for that stage), so it is not a column here.

Legality follows what the runtime (Megatron-style layouts built with torch DTensor/pipelining)
requires; `rules()` states each rule so errors can quote them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import product
from typing import Any

import numpy as np

from vlac.spec import Experiment
from vlac.spec.system import Cluster

SCHEDULE_CODES = ("1f1b", "interleaved_1f1b", "gpipe", "zero_bubble")
MAX_MICROBATCH = 32  # sequences per micro-batch: beyond this nothing gains (GEMMs are already large)
MAX_VIRTUAL_STAGES = 16  # model chunks per pipeline rank
COLUMNS = ("dp", "tp", "sp", "cp", "pp", "ep", "etp", "zero", "raf", "mb", "m", "sched", "v")


@dataclass
class Space:
    """Candidate layouts (one row each) and how many legal ones were set aside and why."""

    cols: dict[str, np.ndarray]
    legal: int
    dominated: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cols["dp"])

    def take(self, idx: np.ndarray) -> "Space":
        return Space({k: v[idx] for k, v in self.cols.items()}, self.legal, self.dominated)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class Limits:
    """The dimensions a layout must divide, read from the experiment."""

    world: int
    node: int
    heads: int
    kv_heads: int
    vocab: int
    ffn: int
    expert_ffn: int
    experts: int
    moe: bool
    blocks: int
    seq_len: int
    global_batch: int
    max_tp: int
    max_pp: int

    @classmethod
    def of(cls, exp: Experiment, cluster: Cluster, n_blocks: int) -> "Limits":
        bb, par, moe = exp.backbone, exp.parallelism, exp.moe
        return cls(world=cluster.world_size, node=cluster.gpus_per_node, heads=bb.heads, kv_heads=bb.n_kv_heads,
                   vocab=exp.vocab_layout().padded, ffn=bb.d_ffn,
                   expert_ffn=(moe.expert_hidden or bb.d_ffn) if moe else 1, experts=moe.experts if moe else 1,
                   moe=moe is not None, blocks=n_blocks, seq_len=exp.train.seq_len,
                   global_batch=exp.train.global_batch, max_tp=par.max_tp or cluster.gpus_per_node,
                   max_pp=par.max_pp or n_blocks)

    # the per-degree rules; `rules()` words them for error messages
    def tp_ok(self, t: int) -> bool:
        return (self.node % t == 0 and t <= self.max_tp and self.heads % t == 0 and self.kv_heads % t == 0
                and self.vocab % t == 0 and self.ffn % t == 0)

    def cp_ok(self, c: int) -> bool:
        # load-balanced causal ring attention splits each sequence into 2*cp chunks
        return c == 1 or self.seq_len % (2 * c) == 0

    def pp_ok(self, p: int) -> bool:
        return p <= min(self.blocks, self.max_pp)

    def shapeless(self) -> "Limits":
        """These limits with every rule that reads the model's shape (heads, kv_heads, the padded
        vocabulary, the FFN widths, the experts) made to pass: tp divides the node, so a width
        of the node's size admits every tp; ep*etp divides tp*cp*dp and so the world, so world
        experts admit every ep. The layouts of these limits are a superset of those of any shape
        on the same cluster, batch and depth, and `shape_rows` picks one shape's."""
        return replace(self, heads=self.node, kv_heads=self.node, vocab=self.node, ffn=self.node,
                       expert_ffn=self.node, experts=self.world if self.moe else 1)

    def shape_rows(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """Which rows of a `shapeless()` space these limits' shape rules keep: tp divides heads,
        kv_heads, the padded vocabulary and the FFN width; ep divides the experts; etp = tp
        (> 1) needs tp to divide the experts' FFN width. Exactly the rows `enumerate_space`
        gives these limits (tests/search/test_fast.py checks it)."""
        tp, ep, etp = cols["tp"], cols["ep"], cols["etp"]
        keep = np.ones(len(tp), bool)
        for width in (self.heads, self.kv_heads, self.vocab, self.ffn):
            keep &= width % tp == 0
        keep &= self.experts % ep == 0
        return keep & ((etp == 1) | (self.expert_ffn % tp == 0))

    def rules(self) -> dict[str, str]:
        return {
            "tp": f"tp divides the node ({self.node} GPUs), heads {self.heads}, kv_heads {self.kv_heads}, the padded "
                  f"vocabulary {self.vocab} and the FFN width {self.ffn}, and tp <= max_tp {self.max_tp}",
            "cp": f"2*cp divides seq_len {self.seq_len} (load-balanced ring attention)",
            "pp": f"pp <= the {self.blocks} decoder layers (and max_pp {self.max_pp})",
            "dp": f"dp = GPUs / (tp*cp*pp), and dp*microbatch_size divides the global batch of {self.global_batch} sequences",
            "ep": (f"ep divides the {self.experts} experts and ep*etp divides tp*cp*dp" if self.moe else "ep = 1 (dense model)"),
            "sequence_parallel": "sequence_parallel needs tp > 1; MoE layers with tp > 1 need it",
            "schedule": "1f1b and zero_bubble need at least pp micro-batches; interleaved_1f1b needs micro-batches "
                        f"divisible by pp and 2 <= virtual_stages <= {MAX_VIRTUAL_STAGES}, pp*virtual_stages <= decoder layers",
            "microbatch_size": f"microbatch_size <= {MAX_MICROBATCH} and divides the sequences per data-parallel rank",
            "zero": "zero 1-3 need a data-parallel (dp*cp) group larger than 1",
        }


def enumerate_space(lim: Limits, pins: dict[str, Any]) -> Space:
    """All legal layouts honouring `pins`, minus those provably dominated in the cost model:
    - GPipe with at least pp micro-batches: same bubble and step time as 1F1B, but holds all m
      micro-batches' activations (with fewer, 1F1B is not legal and GPipe stays);
    - ZeRO-1 with one micro-batch: the same communication as ZeRO-2 (one reduce-scatter per
      step) with unsharded gradients;
    - ZeRO-3 without resharding after forward (FSDP `reshard_after_forward=False`): parameters
      stay gathered from a micro-batch's forward to its backward, so at the peak they are all
      gathered (as in ZeRO-2), yet they are all-gathered every micro-batch instead of once."""

    def allowed(name: str, values) -> list:
        return [v for v in values if name not in pins or pins[name] == v]

    tps = allowed("tp", [t for t in divisors(lim.node) if lim.tp_ok(t)])
    cps = allowed("cp", [c for c in divisors(lim.world) if lim.cp_ok(c)])
    pps = allowed("pp", [p for p in divisors(lim.world) if lim.pp_ok(p)])
    gpipe = "gpipe with m >= pp (same time as 1f1b, more activation memory)"
    zero1 = "zero1 with one micro-batch (same communication as zero2, more memory)"
    no_reshard = "zero3 without reshard after forward (memory of zero2, more communication)"
    dominated = {gpipe: 0, zero1: 0, no_reshard: 0}
    blocks: list[np.ndarray] = []
    legal = 0
    for tp, cp, pp in product(tps, cps, pps):
        if lim.world % (tp * cp * pp):
            continue
        dp = lim.world // (tp * cp * pp)
        if ("dp" in pins and pins["dp"] != dp) or lim.global_batch % dp:
            continue
        sps = [True, False] if tp > 1 else [False]
        if lim.moe and tp > 1:
            sps = [True]  # Megatron requires sequence parallelism for MoE with TP
        etps = [1] + ([tp] if lim.moe and tp > 1 and lim.expert_ffn % tp == 0 else [])
        eps = divisors(lim.experts) if lim.moe else [1]
        zeros = [(z, raf) for z in allowed("zero", [0, 1, 2, 3] if dp * cp > 1 else [0])
                 for raf in ([True, False] if z == 3 else [True])
                 if z < 3 or pins.get("reshard_after_forward", raf) == raf]
        # the columns that do not constrain each other, crossed below with numpy
        inner = [(sp, e, t, z, raf) for sp in allowed("sequence_parallel", sps) for e in allowed("ep", eps)
                 for t in allowed("etp", etps) if (tp * cp * dp) % (e * t) == 0 for z, raf in zeros]
        local = lim.global_batch // dp
        outer = [(mb, local // mb, sched, v) for mb in allowed("microbatch_size", divisors(local))
                 if mb <= MAX_MICROBATCH for sched, v in _schedules(pp, local // mb, lim.blocks, pins)]
        if not inner or not outer:
            continue
        a = np.array(inner, dtype=np.int64)
        b = np.array(outer, dtype=np.int64)
        n_in, n_out = len(a), len(b)
        legal += n_in * n_out
        fixed = np.array([dp, tp, cp, pp], dtype=np.int64)
        block = np.empty((n_in * n_out, len(COLUMNS)), dtype=np.int64)
        block[:, [0, 1, 3, 4]] = fixed  # dp, tp, cp, pp
        block[:, [2, 5, 6, 7, 8]] = np.tile(a, (n_out, 1))  # sp, ep, etp, zero, raf
        block[:, [9, 10, 11, 12]] = np.repeat(b, n_in, axis=0)  # mb, m, sched, v
        keep = np.ones(len(block), bool)
        if "schedule" not in pins:
            drop = (block[:, 11] == SCHEDULE_CODES.index("gpipe")) & (block[:, 10] >= pp)  # else 1F1B is not legal
            dominated[gpipe] += int(drop.sum())
            keep &= ~drop
        if "zero" not in pins:
            drop = keep & (block[:, 7] == 1) & (block[:, 10] == 1)
            dominated[zero1] += int(drop.sum())
            keep &= ~drop
        if "reshard_after_forward" not in pins:
            drop = keep & (block[:, 8] == 0)
            dominated[no_reshard] += int(drop.sum())
            keep &= ~drop
        blocks.append(block[keep])
    arr = np.concatenate(blocks) if blocks else np.zeros((0, len(COLUMNS)), dtype=np.int64)
    cols = {name: arr[:, i] for i, name in enumerate(COLUMNS)}
    cols["sp"] = cols["sp"].astype(bool)
    cols["raf"] = cols["raf"].astype(bool)
    return Space(cols, legal, {k: v for k, v in dominated.items() if v})


def _schedules(pp: int, m: int, blocks: int, pins: dict[str, Any]):
    want = pins.get("schedule")
    want_code = SCHEDULE_CODES.index(want) if want in SCHEDULE_CODES else None
    vs = pins.get("virtual_stages")
    if pp == 1:
        # no pipeline: the schedule is moot; it reads as 1f1b with one stage
        if want_code in (None, 0) and vs in (None, 1):
            yield 0, 1
        return
    for code, name in enumerate(SCHEDULE_CODES):
        if want_code not in (None, code):
            continue
        if name == "interleaved_1f1b":
            if m % pp:
                continue
            for v in range(2, min(MAX_VIRTUAL_STAGES, blocks // pp) + 1):
                if vs in (None, v):
                    yield code, v
        elif vs in (None, 1):
            if name != "gpipe" and m < pp:
                continue  # 1F1B and zero-bubble need at least as many micro-batches as stages
            yield code, 1
