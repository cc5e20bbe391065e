"""The planner: enumerate every legal layout, cost it, pick the fastest that fits, explain."""

from __future__ import annotations

import time
from typing import Any, Iterator

from vlac.spec import Experiment
from vlac.spec.system import Cluster

from .cost_model import CostModel
from .fp8 import fp8_decisions
from .graph import Graph
from .hardware import Hardware
from .lower import lower
from .plan import RECOMPUTE_POLICIES, SCHEDULES, Estimate, Layout, Plan
from .profile import CostProfile

MICROBATCH_SIZES = (1, 2, 4, 8, 16, 32)
PIN_KEYS = ("dp", "tp", "pp", "ep", "cp", "zero", "sequence_parallel", "microbatch_size", "schedule",
            "virtual_stages", "recompute")
TOP_ALTERNATIVES = 5


class PlanError(ValueError):
    """Bad pins or a cluster the experiment cannot use at all."""


def plan(exp: Experiment, cluster: Cluster | None = None, pin: dict[str, Any] | None = None,
         graph: Graph | None = None) -> Plan:
    t0 = time.perf_counter()
    cluster = cluster or exp.cluster
    pins = {**exp.parallelism.pinned(), **(pin or {})}
    unknown = sorted(set(pins) - set(PIN_KEYS))
    if unknown:
        raise PlanError(f"unknown pin(s) {unknown}; valid pins: {', '.join(PIN_KEYS)}")
    g = graph or lower(exp, micro_batch=1)
    hw = Hardware(cluster)
    bb = exp.backbone
    kv_bytes = 2 * bb.n_kv_heads * bb.d_head * g.dtype_bytes
    model = CostModel(CostProfile(g, hw), hw, g.seq_len, bb.hidden, exp.moe.top_k if exp.moe else 0, kv_bytes,
                      exp.train.global_batch_tokens, g.dtype_bytes)

    evaluated = pruned = 0
    feasible: list[Estimate] = []
    closest: Estimate | None = None
    families: dict[str, dict[str, Any]] = {}
    for variants in _layouts(exp, cluster, g, pins):
        # variants differ only in recompute, ordered none -> selective -> full: time only grows
        # and memory only shrinks along them, so the first that fits dominates the rest
        for i, lay in enumerate(variants):
            fam = f"tp{lay.tp} pp{lay.pp} cp{lay.cp} ep{lay.ep}"
            mem = model.memory_only(lay)
            if mem > hw.usable_memory:
                pruned += 1
                _note(families, fam, mem - hw.usable_memory, None)
                if closest is None or mem < closest.peak_memory:
                    closest = model.estimate(lay)
                continue
            evaluated += 1
            est = model.estimate(lay)
            feasible.append(est)
            _note(families, fam, 0.0, est)
            pruned += len(variants) - i - 1
            break

    feasible.sort(key=_rank_key)
    best = feasible[0] if feasible else None
    if best is None and closest is None:
        raise PlanError(_no_layout_reason(exp, cluster, pins))
    chosen = best or closest
    assert chosen is not None
    split_idx = model.split_indices(chosen.layout.pp * chosen.layout.virtual_stages)
    layer_ids = model.p.layers  # -1 = embeddings, n_layers = head + loss
    fp8 = fp8_decisions(exp, g, chosen.layout, lambda lay: model.estimate(lay))
    p = Plan(
        experiment=exp.name,
        cluster={"preset": cluster.preset, "gpu": cluster.gpu.name, "nodes": cluster.nodes,
                 "gpus_per_node": cluster.gpus_per_node, "gpus": cluster.world_size,
                 "usable_memory_gb": hw.usable_memory / 1e9},
        model={"params_total": g.params_total, "params_active": g.params_active, "params_expert": g.params_expert,
               "flops_per_token": g.flops_per_token, "layers": g.n_layers, "seq_len": g.seq_len},
        best=best, closest=None if best else closest,
        alternatives=_alternatives(feasible, best),
        rejected=_rejections(families, best, hw.usable_memory),
        stage_split=[[layer_ids[i] for i in chunk] for chunk in split_idx],
        fp8=fp8, evaluated=evaluated, pruned=pruned, total_steps=exp.train.total_steps,
        pins=pins, advice=[] if best else _advice(exp, closest, hw.usable_memory),
    )
    p.plan_seconds = time.perf_counter() - t0
    return p


def _rank_key(e: Estimate):
    lay = e.layout
    # fastest first; ties broken toward less memory, then a fixed order of the degrees
    return (round(e.step_time_s, 9), round(e.peak_memory, -3), lay.tp, lay.pp, lay.cp, lay.ep, lay.zero,
            lay.microbatch_size, lay.recompute, lay.schedule, lay.virtual_stages, not lay.sequence_parallel)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _layouts(exp: Experiment, cluster: Cluster, g: Graph, pins: dict[str, Any]) -> Iterator[list[Layout]]:
    world, node = cluster.world_size, cluster.gpus_per_node
    bb, par = exp.backbone, exp.parallelism
    seqs = exp.train.global_batch
    experts = exp.moe.experts if exp.moe else 1
    vocab = exp.vocab_layout().padded
    fp8 = exp.precision.fp8.enabled and cluster.gpu.fp8_flops > 0

    def allowed(name: str, values) -> list:
        return [v for v in values if name not in pins or pins[name] == v]

    tps = allowed("tp", [t for t in _divisors(node) if bb.heads % t == 0 and bb.n_kv_heads % t == 0
                         and vocab % t == 0 and t <= (par.max_tp or node)])
    cps = allowed("cp", [c for c in _divisors(world) if c == 1 or (g.seq_len % (2 * c) == 0 and c <= 16)])
    pps = allowed("pp", [p for p in _divisors(world) if p <= min(g.n_layers, par.max_pp or g.n_layers)])
    for tp in tps:
        for cp in cps:
            for pp in pps:
                if world % (tp * cp * pp):
                    continue
                dp = world // (tp * cp * pp)
                if "dp" in pins and pins["dp"] != dp:
                    continue
                eps = allowed("ep", [e for e in _divisors(experts) if (dp * cp) % e == 0] if exp.moe else [1])
                # ZeRO-1 costs what ZeRO-2 costs with more memory, and TP without SP what TP with
                # SP costs with more memory: both are dominated unless pinned
                zeros = allowed("zero", [0, 2, 3] if dp * cp > 1 else [0]) if "zero" not in pins else [pins["zero"]]
                sps = allowed("sequence_parallel", [True] if tp > 1 else [False]) if "sequence_parallel" not in pins \
                    else [pins["sequence_parallel"]]
                rcs = allowed("recompute", RECOMPUTE_POLICIES)
                for mb in allowed("microbatch_size", MICROBATCH_SIZES):
                    if seqs % (dp * mb):
                        continue
                    m = seqs // (dp * mb)
                    for sched, v in _schedules(pp, m, g.n_layers, pins):
                        for ep in eps:
                            for zero in zeros:
                                for sp in sps:
                                    yield [Layout(dp, tp, pp, cp, ep, zero, sp, mb, m, sched, v, rc, fp8) for rc in rcs]


def _schedules(pp: int, m: int, layers: int, pins: dict[str, Any]):
    want = pins.get("schedule")
    vs = pins.get("virtual_stages")
    if pp == 1:
        if want in (None, "1f1b") and vs in (None, 1):
            yield "1f1b", 1
        return
    if m < pp:
        return  # 1F1B needs at least as many micro-batches as stages
    for sched in SCHEDULES:
        if want not in (None, sched):
            continue
        if sched == "interleaved_1f1b":
            if m % pp:
                continue
            for v in (2, 3, 4, 6, 8):
                if layers % (pp * v) == 0 and vs in (None, v):
                    yield sched, v
        elif sched == "zero_bubble":
            continue  # needs split backward (weight-gradient deferral) the runtime does not implement yet
        elif vs in (None, 1):
            yield sched, 1


def _note(fams: dict[str, dict[str, Any]], fam: str, over: float, est: Estimate | None) -> None:
    f = fams.setdefault(fam, {"over": float("inf"), "best": None})
    if est is None:
        f["over"] = min(f["over"], over)
    elif f["best"] is None or _rank_key(est) < _rank_key(f["best"]):
        f["best"] = est


def _alternatives(feasible: list[Estimate], best: Estimate | None) -> list[Estimate]:
    """The best layout of each other family (degrees), so alternatives differ in kind."""
    seen, out = set(), []
    for e in feasible:
        lay = e.layout
        fam = (lay.tp, lay.pp, lay.cp, lay.ep)
        if best is not None and fam == (best.layout.tp, best.layout.pp, best.layout.cp, best.layout.ep):
            continue
        if fam in seen:
            continue
        seen.add(fam)
        out.append(e)
        if len(out) == TOP_ALTERNATIVES:
            break
    return out


def _rejections(fams: dict[str, dict[str, Any]], best: Estimate | None, usable: float) -> list[dict[str, Any]]:
    out = []
    for fam in sorted(fams):
        f = fams[fam]
        if f["best"] is None:
            out.append({"family": fam, "reason": f"over memory by {f['over'] / 1e9:.1f} GB at best "
                                                 f"(usable {usable / 1e9:.1f} GB per GPU)"})
        elif best is not None and f["best"] is not best:
            e = f["best"]
            t = e.time
            slower = e.step_time_s / best.step_time_s - 1
            comm = (t["tp_comm"] + t["ep_comm"] + t["cp_comm"] + t["dp_comm"] + t["pp_p2p"]) / e.step_time_s
            out.append({"family": fam, "reason": f"{slower * 100:.1f} % slower than the chosen plan "
                                                 f"(bubble {t['pp_bubble'] / e.step_time_s * 100:.1f} %, "
                                                 f"exposed communication {comm * 100:.1f} %)",
                        "step_time_s": e.step_time_s})
    return out


def _advice(exp: Experiment, closest: Estimate | None, usable: float) -> list[str]:
    if closest is None:
        return []
    lay = closest.layout
    over = (closest.peak_memory - usable) / 1e9
    tips = [f"the closest layout ({lay.short()}) needs {closest.peak_memory / 1e9:.1f} GB per GPU, "
            f"{over:.1f} GB over the usable {usable / 1e9:.1f} GB"]
    if lay.recompute != "full":
        tips.append("allow full recompute (parallelism.recompute: auto or full)")
    if lay.microbatch_size > 1:
        tips.append("allow a smaller micro-batch (parallelism.microbatch_size: auto or 1)")
    if not exp.precision.fp8.enabled:
        tips.append("enable FP8 (precision.fp8.enabled: true) to shrink activations and weights")
    tips.append(f"add nodes (cluster.nodes: {exp.cluster.nodes * 2}) so model state shards further")
    return tips


def _no_layout_reason(exp: Experiment, cluster: Cluster, pins: dict[str, Any]) -> str:
    return (f"no legal layout of {cluster.world_size} GPUs for this experiment with pins {pins or '{}'}: "
            f"degrees must divide the GPU count, tp must divide heads {exp.backbone.heads} and kv_heads "
            f"{exp.backbone.n_kv_heads} within a node of {cluster.gpus_per_node}, ep must divide the experts, and "
            f"the global batch of {exp.train.global_batch} sequences must split into micro-batches over dp; "
            f"relax a pin or change the cluster")

