"""The planner: enumerate every legal layout, cost them all at once, pick the fastest that fits,
and explain the choice (alternatives, rejected families with numbers, advice when nothing fits)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np

from vlac.runtime.parallel.support import excluded as runtime_excluded
from vlac.runtime.parallel.support import not_as_timed, plan_columns, unsupported
from vlac.spec import Experiment
from vlac.spec.latent_attention import head_shape
from vlac.spec.media_entries import media_entry_counts
from vlac.spec.system import Cluster

from .cost_model import MEMORY_KEYS, TIME_KEYS, CostModel, Evaluation
from .fp8 import fp8_plan, fp8_support
from .graph import RECOMPUTE, Graph
from .hardware import Hardware
from .kernel_costs import KernelCosts, kernel_costs_for
from .lower import lower
from .pins import PIN_KEYS, PlanError, check_pin_values, check_pins_legal, no_layout_reason
from .plan import Estimate, Layout, Plan
from .profile import CostProfile
from .search_space import SCHEDULE_CODES, Limits, Space, enumerate_space

TOP_ALTERNATIVES = 5
ADVICE_NODE_FACTORS = (2, 4, 8, 16, 32, 64)


class Search:
    """One experiment on one cluster: its profile, cost model and search space, reusable for
    several pin sets (the advice re-plans with relaxed pins or a larger cluster)."""

    def __init__(self, exp: Experiment, cluster: Cluster, g: Graph, fp8: bool | None = None):
        self.exp, self.cluster, self.g = exp, cluster, g
        self.hw = Hardware(cluster)
        use, self.fp8_note = fp8_support(exp, cluster)
        self.fp8 = use if fp8 is None else fp8
        self.kernel_costs = kernel_costs_for(cluster)  # measured where $VLAC_KERNEL_COSTS has this GPU
        self.model = CostModel(build_profile(exp, g, self.hw, self.fp8, self.kernel_costs), self.hw,
                               exp.train.global_batch_tokens)
        self.lim = Limits.of(exp, cluster, g.n_layers)
        self.flops_per_step = g.flops_per_token * exp.train.global_batch_tokens  # what MFU counts

    def run(self, pins: dict[str, Any]) -> tuple[Space, Evaluation]:
        space = enumerate_space(self.lim, pins)
        allowed = tuple(i for i, pol in enumerate(RECOMPUTE) if pins.get("recompute", pol) == pol)
        return space, self.model.evaluate(space, allowed)

    def runtime_limits(self, space: Space) -> dict[str, np.ndarray]:
        """Limit name -> the rows vlac's runtime cannot run (vlac.runtime.parallel.support)."""
        c = space.cols
        cols = {**{k: c[k] for k in ("dp", "tp", "cp", "pp", "ep", "etp", "zero", "sp", "m")},
                "schedule": np.array(SCHEDULE_CODES)[c["sched"]], "fp8": self.fp8}
        return runtime_excluded(self.exp, cols)

    def runnable(self, space: Space) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Rows the runtime can run, and the limits that set the others aside. When the pins (or
        the cluster) leave only layouts the runtime cannot run, the rows that break the fewest
        limits stay: the plan is then an analysis, and says it does not run here."""
        limits = self.runtime_limits(space)
        broken = np.zeros(len(space), np.int64)
        for mask in limits.values():
            broken += mask
        return broken == (broken.min() if len(space) else 0), limits

    def estimates(self, ev: Evaluation, rows: list[int]) -> dict[int, Estimate]:
        """Full breakdowns of some rows (their recompute choice kept), in one evaluation."""
        rows = sorted(set(rows))
        sub = ev.space.take(np.array(rows))
        layers = None if ev.layers is None else ev.layers[rows]
        det = self.model.evaluate(sub, forced=ev.policy[rows], forced_layers=layers, time_all=True, detail=True)
        return {i: self._estimate(det, j) for j, i in enumerate(rows)}

    def _estimate(self, ev: Evaluation, i: int) -> Estimate:
        memory = {k: float(ev.memory[k][i]) for k in MEMORY_KEYS}
        memory["total"] = float(ev.peak[i])
        t = {k: float(ev.time[k][i]) for k in TIME_KEYS}
        exp = self.exp
        pp = int(ev.space.cols["pp"][i])
        stages = tuple({"rank": r, **{k: float(ev.rank_time[k][i, r]) for k in ("fwd", "bwd", "wgrad")},
                        "memory": {k: float(ev.rank_memory[i, r, j]) for j, k in enumerate(MEMORY_KEYS)}}
                       for r in range(pp)) if ev.rank_time is not None else ()
        return Estimate(_layout(self, ev, i), memory, t, float(ev.step[i]), float(ev.peak[i]), bool(ev.fits[i]),
                        self.flops_per_step, self.cluster.world_size, self.cluster.gpu.bf16_flops,
                        exp.train.global_batch_tokens,
                        stages)


def _stack_json(exp: Experiment) -> dict[str, Any]:
    """The software stack the plan was costed for (spec.stack, preset values filled in)."""
    st = exp.stack.resolved()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(st).items()}  # JSON has lists


def build_profile(exp: Experiment, g: Graph, hw: Hardware, fp8: bool,
                  kernel_costs: KernelCosts | None = None) -> CostProfile:
    bb, moe, shape = exp.backbone, exp.moe, head_shape(exp.backbone)
    return CostProfile(g, hw, hidden=bb.hidden, heads=bb.heads, kv_heads=shape.kv_heads, head_dim=shape.qk_dim,
                       v_head_dim=shape.v_dim, rope_head_dim=shape.rope_dim,
                       top_k=moe.top_k if moe else 0, experts=moe.experts if moe else 1, fp8=fp8,
                       fp8_recipe=exp.precision.fp8.recipe, causal=exp.fusion.attention_mask == "causal",
                       norm=bb.norm, kernel_costs=kernel_costs, stack=exp.stack.resolved(),
                       media_entries=media_entries(exp), expert_load=expert_load(exp),
                       capacity_factor=moe.capacity_factor if moe else None)


def expert_load(exp: Experiment) -> float:
    """Routing imbalance the cost model charges (moe.load_factor): dropless routing only; with a
    capacity every expert's GEMM is padded to capacity and the overflow dropped, which the
    graph's over-compute already charges."""
    moe = exp.moe
    return moe.load_factor if moe and moe.capacity_factor is None else 1.0


def media_entries(exp: Experiment) -> int:
    """Late fusion: the media entries [M] per sequence that cross-attention reads (each media
    modality's tokens, or its resampler's queries); 0 otherwise. Pipeline stages send them on."""
    return sum(media_entry_counts(exp).values())


def plan(exp: Experiment, cluster: Cluster | None = None, pin: dict[str, Any] | None = None,
         graph: Graph | None = None, advise: bool = True) -> Plan:
    t0 = time.perf_counter()
    cluster = cluster or exp.cluster
    pins = {**exp.parallelism.pinned(), **(pin or {})}
    check_pin_values(pins)
    g = graph or lower(exp, micro_batch=1)
    search = Search(exp, cluster, g)
    check_pins_legal(search.lim, pins)
    space, ev = search.run(pins)
    if len(space) == 0:
        raise PlanError(no_layout_reason(search.lim, pins))

    runnable, limits = search.runnable(space)
    best_i = _best(ev, runnable)
    families = _families(ev, runnable)
    if best_i is None:  # nothing fits: the layout closest to fitting, timed as it stands
        rows = np.nonzero(runnable)[0]
        chosen_i = int(rows[np.lexsort((rows, ev.peak[rows]))[0]])
    else:
        chosen_i = best_i
    unrestricted_i = _best(ev) if limits and best_i is not None else None
    fam_best = _family_key(space, best_i) if best_i is not None else None
    others = [i for f, i, ok in families if ok and f != fam_best][:TOP_ALTERNATIVES]
    est = search.estimates(ev, [chosen_i] + [i for _, i, _ in families]
                           + ([unrestricted_i] if unrestricted_i is not None else []))
    chosen = est[chosen_i]
    chunks, _ = search.model.composition(chosen.layout.pp, chosen.layout.virtual_stages)
    layer_ids = search.model.p.layers
    fp8 = fp8_plan(exp, g, chosen.layout, search.fp8_note,
                   _bf16_step(exp, g, cluster, chosen.layout) if chosen.layout.fp8 else None, chosen.step_time_s)
    p = Plan(
        experiment=exp.name,
        cluster={"preset": cluster.preset, "gpu": cluster.gpu.name, "nodes": cluster.nodes,
                 "gpus_per_node": cluster.gpus_per_node, "gpus": cluster.world_size,
                 "usable_memory_gb": search.hw.usable_memory / 1e9,
                 "memory_headroom_gb": (cluster.gpu.memory - search.hw.usable_memory) / 1e9},
        model={"params_total": g.params_total, "params_active": g.params_active, "params_expert": g.params_expert,
               "flops_per_token": g.flops_per_token,
               "layers": g.n_layers, "seq_len": g.seq_len},
        best=chosen if best_i is not None else None, closest=None if best_i is not None else chosen,
        alternatives=[est[i] for i in others],
        rejected=_rejections(search, est, families, fam_best, chosen if best_i is not None else None),
        stage_split=[[layer_ids[i] for i in chunk] for chunk in chunks],
        fp8=fp8, evaluated=int(ev.timed.sum()), pruned=int(space.legal - ev.timed.sum()), total_steps=exp.train.total_steps,
        pins=pins,
        kernel_costs=search.kernel_costs.describe(search.model.p.runtime_kernels),
        runtime=_runtime_note(exp, pins, chosen, limits, runnable,
                              est[unrestricted_i] if unrestricted_i is not None else None),
        search={"legal": space.legal, "candidates": len(space),
                "pruned_dominated": space.dominated,
                "pruned_over_memory": int((~ev.fits).sum()),
                "recompute": "chosen per pipeline stage: the least recompute time that fits that stage"
                             + (", full recompute of k of its blocks included" if search.model.p.stack.partial_recompute
                                else ""),
                "stack": _stack_json(exp)},
    )
    if best_i is None and advise:
        p.advice = _advice(exp, cluster, g, pins, chosen, search.hw.usable_memory)
    elif pins and advise:
        p.pin_notes = _pin_cost(search, pins, chosen)
    p.plan_seconds = time.perf_counter() - t0
    return p


# ---- results -> Estimate ---------------------------------------------------------------------------
def _layout(search: Search, ev: Evaluation, i: int) -> Layout:
    c = ev.space.cols
    pp = int(c["pp"][i])
    pol = tuple(RECOMPUTE[int(x)] for x in ev.policy[i, :pp])
    worst = max(pol, key=RECOMPUTE.index)
    _, counts = search.model.composition(pp, int(c["v"][i]))
    blocks = counts @ search.model.is_block  # block layers per rank
    layers = blocks if ev.layers is None else np.where(ev.policy[i, :pp] == RECOMPUTE.index("full"),
                                                        ev.layers[i, :pp], 0)
    partial = any(p == "full" and k < b for p, k, b in zip(pol, layers, blocks))
    sched = SCHEDULE_CODES[int(c["sched"][i])]
    return Layout(dp=int(c["dp"][i]), tp=int(c["tp"][i]), pp=pp, cp=int(c["cp"][i]), ep=int(c["ep"][i]),
                  zero=int(c["zero"][i]), sequence_parallel=bool(c["sp"][i]), microbatch_size=int(c["mb"][i]),
                  num_microbatches=int(c["m"][i]), schedule=sched, virtual_stages=int(c["v"][i]), recompute=worst,
                  fp8=search.fp8, etp=int(c["etp"][i]), stage_recompute=pol if len(set(pol)) > 1 else (),
                  reshard_after_forward=bool(c["raf"][i]),
                  stage_recompute_layers=tuple(int(k) for k in layers) if partial else ())


def _best(ev: Evaluation, among: np.ndarray | None = None) -> int | None:
    """The fastest fitting row (of `among`, a row mask); ties toward less memory, then a fixed
    order of the columns."""
    ok = ev.fits & ev.timed
    idx = np.nonzero(ok if among is None else ok & among)[0]
    if not len(idx):
        return None
    idx = idx[ev.step[idx] == ev.step[idx].min()]
    idx = idx[ev.peak[idx] == ev.peak[idx].min()]
    c = ev.space.cols
    keys = [~c["raf"][idx], ~c["sp"][idx], c["v"][idx], c["sched"][idx], c["mb"][idx], c["zero"][idx],
            c["etp"][idx], c["ep"][idx], c["cp"][idx], c["pp"][idx], c["tp"][idx]]
    return int(idx[np.lexsort(keys)][0])


def _bf16_step(exp: Experiment, g: Graph, cluster: Cluster, lay: Layout) -> float:
    """Step time of the same layout (same recompute per stage) without FP8."""
    bf16 = Search(exp, cluster, g, fp8=False)
    row = {"dp": lay.dp, "tp": lay.tp, "sp": lay.sequence_parallel, "cp": lay.cp, "pp": lay.pp, "ep": lay.ep,
           "etp": lay.etp, "zero": lay.zero, "raf": lay.reshard_after_forward, "mb": lay.microbatch_size,
           "m": lay.num_microbatches,
           "sched": SCHEDULE_CODES.index(lay.schedule), "v": lay.virtual_stages}
    cols = {k: np.array([v], dtype=bool if k in ("sp", "raf") else np.int64) for k, v in row.items()}
    forced = np.array([[RECOMPUTE.index(r) for r in lay.recompute_per_stage]])
    layers = np.array([lay.stage_recompute_layers]) if lay.stage_recompute_layers else None
    ev = bf16.model.evaluate(Space(cols, 1), forced=forced, forced_layers=layers, time_all=True)
    return float(ev.step[0])


# ---- explanation ----------------------------------------------------------------------------------
def _family_key(space: Space, i: int) -> tuple:
    c = space.cols
    return tuple(int(c[k][i]) for k in ("tp", "pp", "cp", "ep", "etp"))


def _family_name(f: tuple) -> str:
    tp, pp, cp, ep, etp = f
    return f"tp{tp} pp{pp} cp{cp} ep{ep}" + (f" etp{etp}" if etp > 1 else "")


def _families(ev: Evaluation, among: np.ndarray) -> list[tuple[tuple, int, bool]]:
    """(family, its representative row, fits) for every degree family of the rows `among`, most
    relevant first: the families with a fitting layout by step time, then the others by how far
    over memory."""
    c = ev.space.cols
    fam = np.stack([c[k] for k in ("tp", "pp", "cp", "ep", "etp")], axis=1)
    code = np.zeros(len(fam), np.int64)
    for j in range(fam.shape[1]):
        code = code * (int(fam[:, j].max()) + 1) + fam[:, j]
    ok = ev.fits & ev.timed
    rows = np.nonzero(among)[0]
    order = rows[np.lexsort((rows, ev.peak[rows], np.where(ok[rows], ev.step[rows], np.inf), code[rows]))]
    first = np.ones(len(order), bool)
    first[1:] = code[order][1:] != code[order][:-1]
    reps = order[first]
    feas = [(tuple(int(x) for x in fam[i]), int(i), True) for i in reps if ok[i]]
    infeas = [(tuple(int(x) for x in fam[i]), int(i), False) for i in reps if not ok[i]]
    feas.sort(key=lambda t: (ev.step[t[1]], t[0]))
    infeas.sort(key=lambda t: (ev.peak[t[1]], t[0]))
    return feas + infeas


def _runtime_note(exp: Experiment, pins: dict[str, Any], chosen: Estimate, limits: dict[str, np.ndarray],
                  runnable: np.ndarray, unrestricted: Estimate | None) -> dict[str, Any]:
    """Whether vlac's runtime runs the chosen layout, how many layouts its limits set aside, and
    what the best of those would have gained."""
    lay = chosen.layout
    cols = plan_columns({"dp": lay.dp, "tp": lay.tp, "cp": lay.cp, "pp": lay.pp, "ep": lay.ep,
                         "expert_tensor_parallel": lay.etp, "zero": lay.zero, "num_microbatches": lay.num_microbatches,
                         "sequence_parallel": lay.sequence_parallel, "schedule": lay.schedule, "fp8": lay.fp8})
    note: dict[str, Any] = {"runs": not unsupported(exp, cols), "unsupported": unsupported(exp, cols),
                            "not_as_timed": not_as_timed(exp, cols),
                            "excluded_layouts": {k: int(m.sum()) for k, m in limits.items()},
                            "excluded_total": int((~runnable).sum())}
    if note["unsupported"] or note["not_as_timed"]:
        note["why"] = ("the pins ask for it" if pins else "every legal layout of this cluster needs it") \
            + "; of those, the plan breaks the fewest runtime limits"
    if unrestricted is not None and unrestricted.step_time_s < chosen.step_time_s * (1 - 1e-9):
        note["best_excluded"] = {"layout": unrestricted.layout.short(), "step_time_s": unrestricted.step_time_s,
                                 "faster_pct": (chosen.step_time_s / unrestricted.step_time_s - 1) * 100}
    return note


def _rejections(search: Search, est: dict[int, Estimate], families, fam_best,
                best: Estimate | None) -> list[dict[str, Any]]:
    usable = search.hw.usable_memory
    out = []
    for fam, i, ok in families:
        if fam == fam_best:
            continue
        e = est[i]
        name = _family_name(fam)
        if not ok:
            over = e.peak_memory - usable
            m = e.memory
            state = m["weights"] + m["gradients"] + m["optimizer"]
            out.append({"family": name, "fits": False, "over_memory_gb": over / 1e9, "layout": e.layout.short(),
                        "reason": f"over memory by {over / 1e9:.1f} GB at best ({e.peak_memory / 1e9:.1f} GB per GPU: "
                                  f"model state {state / 1e9:.1f}, activations {m['activations'] / 1e9:.1f}; "
                                  f"usable {usable / 1e9:.1f} GB)"})
            continue
        t, step = e.time, e.step_time_s
        comm = t["tp_comm"] + t["ep_comm"] + t["cp_comm"] + t["dp_comm"] + t["pp_p2p"]
        slower = step / best.step_time_s - 1 if best else 0.0
        out.append({"family": name, "fits": True, "step_time_s": step, "slower_pct": slower * 100,
                    "layout": e.layout.short(),
                    "reason": f"{slower * 100:.1f} % slower than the chosen plan (bubble {t['pp_bubble'] / step * 100:.1f} %, "
                              f"exposed communication {comm / step * 100:.1f} %, recompute {t['recompute'] / step * 100:.1f} %)"})
    return out


def _pin_cost(search: Search, pins: dict[str, Any], chosen: Estimate) -> list[str]:
    """What the pins (from the spec's parallelism section and --pin) cost against the plan the
    planner would choose without them."""
    space, ev = search.run({})
    i = _best(ev, search.runnable(space)[0])
    if i is None:
        return []
    free = search.estimates(ev, [i])[i]
    if free.step_time_s >= chosen.step_time_s * (1 - 1e-9):
        return [f"the pins {pins} cost nothing: the unconstrained optimum is as fast"]
    return [f"the pins {pins} cost {(chosen.step_time_s / free.step_time_s - 1) * 100:.1f} % step time: without them "
            f"the best plan is {free.layout.short()} ({free.step_time_s:.3f} s per step)"]


def _advice(exp: Experiment, cluster: Cluster, g: Graph, pins: dict[str, Any], closest: Estimate,
            usable: float) -> list[str]:
    """Why nothing fits and what would: each remedy is checked by planning again."""
    lay = closest.layout
    over = (closest.peak_memory - usable) / 1e9
    m = closest.memory
    tips = [f"nothing fits: the closest layout ({lay.short()}) needs {closest.peak_memory / 1e9:.1f} GB per GPU, "
            f"{over:.1f} GB over the usable {usable / 1e9:.1f} GB (weights {m['weights'] / 1e9:.1f}, gradients "
            f"{m['gradients'] / 1e9:.1f}, optimizer {m['optimizer'] / 1e9:.1f}, activations {m['activations'] / 1e9:.1f} GB)"]

    def fits(pins_: dict[str, Any], cl: Cluster) -> Plan | None:
        try:
            p = plan(exp, cluster=cl, pin=pins_, graph=g, advise=False)
        except PlanError:
            return None
        return p if p.feasible else None

    for key, hint in (("recompute", "allow more recompute (parallelism.recompute: auto)"),
                      ("microbatch_size", "allow a smaller micro-batch (parallelism.microbatch_size: auto)"),
                      ("zero", "allow deeper ZeRO sharding (parallelism.zero: auto)")):
        if key in pins:
            p = fits({k: v for k, v in pins.items() if k != key}, cluster)
            if p is not None:
                tips.append(f"{hint}: {p.best.layout.short()} then fits at {p.best.peak_memory / 1e9:.1f} GB")
    if pins:
        p = fits({}, cluster)
        if p is not None:
            tips.append(f"drop the pins {pins}: {p.best.layout.short()} fits at {p.best.peak_memory / 1e9:.1f} GB")
    for factor in ADVICE_NODE_FACTORS:
        bigger = cluster.model_copy(update={"nodes": cluster.nodes * factor})
        p = fits(pins, bigger)
        if p is not None:
            tips.append(f"add nodes: with cluster.nodes: {bigger.nodes} ({bigger.world_size} GPUs) "
                        f"{p.best.layout.short()} fits at {p.best.peak_memory / 1e9:.1f} GB per GPU")
            break
    else:
        tips.append(f"even {cluster.nodes * ADVICE_NODE_FACTORS[-1]} nodes do not fit these pins")
    return tips


__all__ = ["PIN_KEYS", "PlanError", "Search", "build_profile", "plan"]
