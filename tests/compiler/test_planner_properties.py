"""Properties of the planner on small models: every returned plan is legal and fits; the choice
equals brute force over all legal layouts (every recompute choice per stage included, full
recompute of any number of a stage's blocks where the stack allows it, dominated layouts included); the same input gives byte-identical JSON."""

import json
from itertools import product

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vlac
from test_planner import assert_legal
from vlac.compiler.hardware import MEMORY_FRAGMENTATION, MEMORY_RESERVED_BYTES
from vlac.compiler.planner import PlanError, Search
from vlac.compiler.search_space import COLUMNS, MAX_MICROBATCH, MAX_VIRTUAL_STAGES, SCHEDULE_CODES, Space


def small_spec(layers=4, hidden=64, heads=4, kv_heads=2, ffn=128, seq=64, batch=8, experts=0, top_k=2,
               nodes=1, gpus_per_node=8, usable_mb=None, fp8=False) -> dict:
    """A text-only decoder; `usable_mb` sets the GPU memory so that the planner's usable memory
    (after its fixed reserve and fragmentation share) is that many MB."""
    memory_gb = 80.0 if usable_mb is None else (usable_mb * 1e6 + MEMORY_RESERVED_BYTES) / (1 - MEMORY_FRAGMENTATION) / 1e9
    spec = {
        "name": "small",
        "modalities": {"text": {"kind": "text", "tokenizer": "bpe", "vocab_size": 1000, "tokens": seq - 2}},
        "vocab": {"pad_to_multiple": 64},
        "backbone": {"layers": layers, "hidden": hidden, "heads": heads, "kv_heads": kv_heads, "ffn_hidden": ffn,
                     "context_length": seq},
        "data": {"mixture": [{"name": "text", "modalities": ["text"]}]},
        "train": {"seq_len": seq, "global_batch_tokens": seq * batch},
        "precision": {"dtype": "bf16", "fp8": {"enabled": fp8}},
        "cluster": {"preset": "h100-sxm", "nodes": nodes, "gpus_per_node": gpus_per_node,
                    "gpu": {"memory": f"{memory_gb:.6f}GB"}},
    }
    if experts:
        spec["moe"] = {"layers": "all", "experts": experts, "top_k": top_k, "expert_hidden": 64, "capacity_factor": 1.0}
    return spec


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def legal_layouts(exp):
    """Every layout the runtime accepts, enumerated from the rules directly (not from the
    planner's search space), each with every recompute choice per pipeline stage."""
    cl, bb, moe = exp.cluster, exp.backbone, exp.moe
    world, node, seq, gb = cl.world_size, cl.gpus_per_node, exp.train.seq_len, exp.train.global_batch
    vocab = exp.vocab_layout().padded
    for tp, cp, pp in product(divisors(node), divisors(world), divisors(world)):
        if world % (tp * cp * pp) or bb.heads % tp or bb.n_kv_heads % tp or vocab % tp or bb.d_ffn % tp:
            continue
        if cp > 1 and seq % (2 * cp) or pp > bb.layers:
            continue
        dp = world // (tp * cp * pp)
        if gb % dp:
            continue
        experts = [(e, t) for e in (divisors(moe.experts) if moe else [1])
                   for t in ([1, tp] if moe and tp > 1 and (moe.expert_hidden or bb.d_ffn) % tp == 0 else [1])
                   if (tp * cp * dp) % (e * t) == 0]
        for sp, (ep, etp), zero, raf, mb in product((False, True), sorted(set(experts)), range(4), (True, False),
                                                    divisors(gb // dp)):
            if (sp and tp == 1) or (moe and tp > 1 and not sp) or (zero and dp * cp == 1) or (not raf and zero != 3):
                continue
            if mb > MAX_MICROBATCH:
                continue
            m = gb // (dp * mb)
            for sched, name in enumerate(SCHEDULE_CODES):
                for v in range(1, MAX_VIRTUAL_STAGES + 1):
                    if pp == 1:
                        ok = name == "1f1b" and v == 1
                    elif name == "interleaved_1f1b":
                        ok = v > 1 and m % pp == 0 and pp * v <= bb.layers
                    else:
                        ok = v == 1 and (name == "gpipe" or m >= pp)
                    if not ok:
                        continue
                    for policy in product(range(3), repeat=pp):
                        yield (dp, tp, sp, cp, pp, ep, etp, zero, raf, mb, m, sched, v), policy


def brute_force_best(exp, g):
    search = Search(exp, exp.cluster, g)
    model = search.model
    rows, policies, layers = [], [], []
    for row, pol in legal_layouts(exp):
        # with partial_recompute a `full` rank may cover any 1..n of its n blocks
        pp, v = row[COLUMNS.index("pp")], row[COLUMNS.index("v")]
        blocks = (model.composition(pp, v)[1] @ model.is_block).astype(int)
        counts = [range(1, n + 1) if p == 2 and model.p.stack.partial_recompute else [-1] for p, n in zip(pol, blocks)]
        for ks in product(*counts):
            rows.append(row)
            policies.append(pol + (-1,) * (8 - len(pol)))
            layers.append(ks + (-1,) * (8 - len(ks)))
    arr = np.array(rows, dtype=np.int64)
    cols = {name: arr[:, i] for i, name in enumerate(COLUMNS)}
    cols["sp"], cols["raf"] = cols["sp"].astype(bool), cols["raf"].astype(bool)
    space = Space(cols, len(rows))
    ev = model.evaluate(space, forced=np.array(policies), forced_layers=np.array(layers, float))
    ok = ev.fits & ev.timed
    runnable = ok & search.runnable(space)[0]
    best = float(ev.step[ok].min()) if ok.any() else None
    best_runnable = float(ev.step[runnable].min()) if runnable.any() else None
    return best, best_runnable, len(rows), int(ok.sum())


@pytest.mark.parametrize("case", [
    dict(nodes=1, gpus_per_node=8, usable_mb=2.4),  # dense, one node; memory binds for about half
    dict(nodes=2, gpus_per_node=8, usable_mb=1.6),  # dense, two nodes
    dict(nodes=1, gpus_per_node=8, usable_mb=2.9, experts=4),  # MoE, one node
    dict(nodes=2, gpus_per_node=4, usable_mb=2.5, experts=4, batch=4),  # MoE, two nodes of 4
    dict(nodes=2, gpus_per_node=4, usable_mb=2.6, fp8=True),  # FP8 weight copies in memory
], ids=["dense-8", "dense-16", "moe-8", "moe-2x4", "dense-fp8-2x4"])
def test_planner_equals_brute_force(case):
    exp = vlac.load(small_spec(**case))
    g = vlac.lower(exp)
    p = vlac.plan(exp, graph=g)
    best, best_runnable, n_rows, n_fit = brute_force_best(exp, g)
    assert n_rows > 1000 and 0 < n_fit < n_rows  # memory binds for some layouts, not all
    assert p.feasible and p.runtime["runs"]
    # the fastest layout vlac's runtime runs, and the fastest of all (reported when it is faster)
    assert p.best.step_time_s == pytest.approx(best_runnable, rel=1e-12)
    overall = p.runtime.get("best_excluded", {}).get("step_time_s", p.best.step_time_s)
    assert overall == pytest.approx(best, rel=1e-12)
    assert p.evaluated + p.pruned == p.search["legal"]


def assert_plan_sound(exp, p):
    usable = p.cluster["usable_memory_gb"] * 1e9
    est = p.chosen
    assert_legal(exp, est.layout)
    if p.feasible:
        assert est.peak_memory <= usable
        for s in est.stages:
            assert sum(s["memory"].values()) <= usable * (1 + 1e-12)
        for alt in p.alternatives:
            assert_legal(exp, alt.layout)
            assert alt.peak_memory <= usable and alt.step_time_s >= est.step_time_s
    else:
        assert est.peak_memory > usable and p.advice
    assert est.step_time_s > 0 and np.isfinite(est.step_time_s)
    assert sum(est.time.values()) == pytest.approx(est.step_time_s)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.integers(2, 6), heads=st.sampled_from([2, 4, 8]), kv_div=st.sampled_from([1, 2]),
       hidden_per_head=st.sampled_from([16, 32]), seq=st.sampled_from([32, 64, 128]), batch=st.sampled_from([4, 8, 12]),
       experts=st.sampled_from([0, 4]), nodes=st.integers(1, 3), gpus_per_node=st.sampled_from([2, 4, 8]),
       usable_mb=st.floats(0.5, 12.0), fp8=st.booleans())
def test_every_plan_is_legal_and_fits(layers, heads, kv_div, hidden_per_head, seq, batch, experts, nodes,
                                      gpus_per_node, usable_mb, fp8):
    hidden = heads * hidden_per_head
    exp = vlac.load(small_spec(layers=layers, hidden=hidden, heads=heads, kv_heads=heads // kv_div, ffn=2 * hidden,
                               seq=seq, batch=batch, experts=experts, nodes=nodes, gpus_per_node=gpus_per_node,
                               usable_mb=round(usable_mb, 3), fp8=fp8))
    try:
        p = vlac.plan(exp)
    except PlanError as e:  # only when no layout is legal at all
        assert "no legal layout" in str(e)
        return
    assert_plan_sound(exp, p)


def test_byte_identical_json_across_runs():
    exp = vlac.load(small_spec(nodes=2, usable_mb=2.5, experts=4))
    a = json.dumps(vlac.plan(exp).to_json(), sort_keys=True)
    b = json.dumps(vlac.plan(vlac.load(small_spec(nodes=2, usable_mb=2.5, experts=4))).to_json(), sort_keys=True)
    assert a == b
