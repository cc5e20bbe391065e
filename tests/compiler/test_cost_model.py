"""The cost model's parts: collectives, GEMM roofline, pipeline bubbles against a pass-by-pass
simulation, recompute and ZeRO trade-offs, stage splits, causal attention, FP8 recipes."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vlac
from test_planner_properties import small_spec
from vlac.compiler.hardware import MEMORY_FRAGMENTATION, MEMORY_RESERVED_BYTES, Hardware
from vlac.compiler.planner import Search
from vlac.compiler.profile import balanced_partition, equal_share_partition
from vlac.compiler.schedule_sim import makespan, rank_order, simulate
from vlac.compiler import cost_arrays
from vlac.compiler.search_space import COLUMNS, SCHEDULE_CODES, Space, enumerate_space
from vlac.spec.system import Cluster

H100 = Hardware(Cluster.model_validate({"preset": "h100-sxm", "nodes": 4, "gpus_per_node": 8}))


def one_row(**kw) -> Space:
    row = dict(dp=1, tp=1, sp=False, cp=1, pp=1, ep=1, etp=1, zero=0, raf=True, mb=1, m=1, sched=0, v=1)
    row.update(kw)
    cols = {k: np.array([row[k]], dtype=bool if k in ("sp", "raf") else np.int64) for k in COLUMNS}
    return Space(cols, 1)


# ---- hardware -------------------------------------------------------------------------------------
def test_bus_bandwidth_ramps_with_message_size():
    small, large = 1e6, 1e9
    bw = lambda n: 2 * 7 / 8 * n / H100.all_reduce(n, 8)  # noqa: E731  effective bus bandwidth
    assert bw(small) < 0.2 * bw(large)  # latency dominates a 1 MB all-reduce
    assert bw(large) == pytest.approx(H100.cluster.network.nvlink_allreduce_busbw, rel=0.01)


def test_groups_across_nodes_are_slower_and_all_to_all_uses_one_nic():
    n = 1e9
    assert H100.all_reduce(n, 8, stride=1) < H100.all_reduce(n, 8, stride=2) < H100.all_reduce(n, 8, stride=8)
    # 16 ranks over two nodes: half the data leaves the node through this GPU's own NIC
    nic = H100.cluster.network.nic_bandwidth * H100.cluster.network.nic_efficiency
    t = H100.all_to_all(n, 16, stride=1)
    assert t == pytest.approx(n * 8 / 16 / nic + H100._latency(16, 1), rel=1e-9)


def test_gemm_roofline_makes_skinny_gemms_memory_bound():
    big = H100.gemm_seconds(2 * 8192 ** 3, 8192, 8192, 8192, False)
    skinny = H100.gemm_seconds(2 * 64 * 8192 * 8192, 64, 8192, 8192, False)
    rate = lambda t, f: f / t  # noqa: E731
    assert rate(skinny, 2 * 64 * 8192 ** 2) < 0.3 * rate(big, 2 * 8192 ** 3)
    fp8 = H100.gemm_seconds(2 * 8192 ** 3, 8192, 8192, 8192, True)
    assert 1.3 < big / fp8 < 2.0


def test_usable_memory_states_its_headroom():
    # an "80 GB" H100 is the 81,559 MiB the driver reports (spec/hardware_presets.py), not 80e9
    assert H100.usable_memory == pytest.approx(81_559 * 2**20 * (1 - MEMORY_FRAGMENTATION) - MEMORY_RESERVED_BYTES)


# ---- pipeline schedules ---------------------------------------------------------------------------
@pytest.mark.parametrize("schedule,pp,v,m", [("1f1b", 4, 1, 8), ("gpipe", 4, 1, 6), ("interleaved_1f1b", 4, 2, 8),
                                             ("interleaved_1f1b", 4, 3, 12), ("zero_bubble", 4, 1, 8),
                                             ("1f1b", 8, 1, 16), ("zero_bubble", 3, 1, 7)])
def test_simulated_bubble_matches_the_formula(schedule, pp, v, m):
    # equal forward, input-gradient and weight-gradient passes: the papers' setting
    f, b, w = 1.0, 2.0, 1.0  # seconds of one micro-batch on every rank; w is the weight-gradient part of b
    ops = simulate(schedule, pp, v, m, [f] * pp, [b] * pp, [w] * pp)
    t = f + b
    bubble = makespan(ops) - m * t
    expected = {"interleaved_1f1b": (pp - 1) * t / v, "zero_bubble": (pp - 1) * (t - 2 * w)}.get(schedule, (pp - 1) * t)
    assert bubble == pytest.approx(expected)
    assert len(ops) == m * v * pp * (3 if schedule == "zero_bubble" else 2)
    # a lighter weight-gradient pass: the ZB-H1 formula stays an upper bound of the simulation
    if schedule == "zero_bubble":
        ops = simulate(schedule, pp, v, m, [f] * pp, [b] * pp, [0.8] * pp)
        assert makespan(ops) - m * t <= (pp - 1) * (t - 1.6) + 1e-9


def test_interleaved_rank_order_covers_every_chunk_once():
    order = rank_order("interleaved_1f1b", 4, 3, 8, 1)
    assert sorted(op for op in order if op[0] == "F") == sorted(("F", i, c) for i in range(8) for c in range(3))
    assert len(order) == 2 * 8 * 3


def test_cost_model_bubble_equals_simulation():
    exp = vlac.load(small_spec(layers=8, nodes=1, gpus_per_node=8, batch=32))
    search = Search(exp, exp.cluster, vlac.lower(exp))
    for sched, v in (("1f1b", 1), ("interleaved_1f1b", 2), ("zero_bubble", 1)):
        ev = search.model.evaluate(one_row(dp=2, pp=4, mb=1, m=16, sched=SCHEDULE_CODES.index(sched), v=v),
                                   forced=np.zeros((1, 4), np.int64), time_all=True, detail=True)
        fwd, bwd, wgrad = (list(ev.rank_time[k][0, :4]) for k in ("fwd", "bwd", "wgrad"))
        ops = simulate(sched, 4, v, 16, fwd, bwd, wgrad)
        compute = 16 * max(f + b for f, b in zip(fwd, bwd))
        # with unequal ranks the model's fill-and-drain sum is an upper bound of the simulation
        assert makespan(ops) - compute <= ev.time["pp_bubble"][0] * (1 + 1e-9)
        assert makespan(ops) - compute >= 0.5 * ev.time["pp_bubble"][0]


# ---- trade-offs ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mid_model():
    exp = vlac.load(small_spec(layers=8, hidden=256, heads=8, kv_heads=4, ffn=512, seq=256, batch=32, experts=4,
                               nodes=2, gpus_per_node=8))
    return Search(exp, exp.cluster, vlac.lower(exp))


def _assert_same_rows(whole, part, idx):
    """Every figure of rows `idx` of `whole` equals row for row those of `part`, bit for bit."""
    for name in ("peak", "fits", "timed", "step"):
        np.testing.assert_array_equal(getattr(whole, name)[idx], getattr(part, name), err_msg=name)
    width = part.policy.shape[1]
    np.testing.assert_array_equal(whole.policy[idx, :width], part.policy)
    assert (whole.policy[idx, width:] == -1).all()  # ranks past a row's pp hold no policy
    for kind in ("time", "memory", "rank_time"):
        for k, a in getattr(part, kind).items():
            np.testing.assert_array_equal(getattr(whole, kind)[k][idx, ...][:, :width] if a.ndim == 2 else
                                          getattr(whole, kind)[k][idx], a, err_msg=f"{kind}.{k}")
    np.testing.assert_array_equal(whole.rank_memory[idx, :width], part.rank_memory)


def test_one_pass_over_every_pipeline_shape_equals_a_pass_per_shape(monkeypatch):
    # the cost model costs every pipeline shape (pp, v) in one pass, padding the rank axis to the
    # largest pp: each row's figures must equal those of its own shape costed alone (one pass per
    # shape, as before) and of several smaller passes, bit for bit, with rows that do not fit
    spec = dict(layers=8, hidden=256, heads=8, kv_heads=4, ffn=512, seq=256, batch=32, experts=4, nodes=2)
    exp = vlac.load(small_spec(**spec))
    search = Search(exp, exp.cluster, vlac.lower(exp))
    space = enumerate_space(search.lim, {})
    peaks = search.model.evaluate(space, time_all=True).peak
    tight = vlac.load(small_spec(**spec, usable_mb=float(np.median(peaks)) / 1e6))  # about half the layouts fit
    model = Search(tight, tight.cluster, search.g).model
    rng = np.random.default_rng(0)
    sub = space.take(np.sort(rng.choice(len(space), size=min(600, len(space)), replace=False)))
    c = sub.cols
    shapes = np.unique(c["pp"] * 1000 + c["v"])
    assert len(shapes) >= 6 and len(np.unique(c["pp"])) >= 4
    for kw in ({}, {"allowed": (1, 2)}, {"time_all": True, "detail": True}):
        whole = model.evaluate(sub, **kw)
        assert 0 < whole.fits.sum() < len(sub)
        forced = model.evaluate(sub, forced=whole.policy, time_all=True, detail=True)  # as the planner's estimates
        for shape in shapes:
            idx = np.nonzero(c["pp"] * 1000 + c["v"] == shape)[0]
            part = model.evaluate(sub.take(idx), **kw)
            for name in ("peak", "fits", "timed", "step", "policy"):
                np.testing.assert_array_equal(getattr(whole, name)[idx, ...][:, :part.policy.shape[1]]
                                              if name == "policy" else getattr(whole, name)[idx],
                                              getattr(part, name), err_msg=name)
            _assert_same_rows(forced, model.evaluate(sub.take(idx), forced=whole.policy[idx], time_all=True,
                                                     detail=True), idx)
    # several passes (a small cell budget): the same figures
    whole = model.evaluate(sub, time_all=True, detail=True)
    monkeypatch.setattr(cost_arrays, "CELLS", 64)
    monkeypatch.setattr(cost_arrays, "MIN_ROWS", 8)
    assert len(cost_arrays.row_chunks(c["pp"])) > 10
    _assert_same_rows(whole, model.evaluate(sub, time_all=True, detail=True), np.arange(len(sub)))


def test_recompute_trades_time_for_memory(mid_model):
    row = one_row(dp=4, tp=2, sp=True, pp=2, mb=2, m=4, zero=1, ep=2)
    res = [mid_model.model.evaluate(row, forced=np.full((1, 2), pol), time_all=True) for pol in range(3)]
    steps = [r.step[0] for r in res]
    peaks = [r.peak[0] for r in res]
    assert steps[0] < steps[1] < steps[2] and peaks[0] > peaks[1] > peaks[2]


def test_zero_levels_trade_memory_for_communication(mid_model):
    res = [mid_model.model.evaluate(one_row(dp=16, mb=1, m=2, zero=z), forced=np.zeros((1, 1), np.int64),
                                    time_all=True, detail=True) for z in range(4)]
    mem = [(r.memory["weights"][0], r.memory["gradients"][0], r.memory["optimizer"][0]) for r in res]
    assert mem[0][2] > mem[1][2] and mem[1][1] > mem[2][1] and mem[2][0] > mem[3][0]
    dp = [r.time["dp_comm"][0] for r in res]
    assert dp[3] >= dp[2] >= dp[1] - 1e-12


def test_sequence_parallelism_shards_activations(mid_model):
    sp, no_sp = (mid_model.model.evaluate(one_row(dp=8, tp=2, sp=s, mb=1, m=4, ep=1), forced=np.zeros((1, 1), np.int64),
                                          time_all=True, detail=True) for s in (True, False))
    assert sp.memory["activations"][0] < no_sp.memory["activations"][0]


# ---- stage split ------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.floats(0.1, 10.0), min_size=2, max_size=9), data=st.data())
def test_balanced_partition_is_optimal(weights, data):
    parts = data.draw(st.integers(1, len(weights)))
    runs = balanced_partition(weights, parts)
    assert len(runs) == parts and runs[0][0] == 0 and runs[-1][1] == len(weights)
    assert all(a < b for a, b in runs) and all(runs[i][1] == runs[i + 1][0] for i in range(parts - 1))
    worst = max(sum(weights[a:b]) for a, b in runs)
    best = min(max(sum(weights[a:b]) for a, b in zip((0,) + cuts, cuts + (len(weights),)))
               for cuts in itertools.combinations(range(1, len(weights)), parts - 1))
    assert worst == pytest.approx(best, rel=1e-9)
    shares = equal_share_partition(weights, parts)
    assert len(shares) == parts and all(a < b for a, b in shares)


# ---- graph corrections and FP8 -------------------------------------------------------------------------
def test_causal_attention_counts_half_once():
    exp = vlac.load(small_spec(seq=128))
    g = vlac.lower(exp)
    prof = Search(exp, exp.cluster, g).model.p
    attn = [n for n in g.nodes if n.kind == "attention"][0]
    dense = 4.0 * 128 ** 2 * exp.backbone.heads * exp.backbone.d_head * g.micro_batch
    block = next(q for q in prof.profiles if q.kind == "block")
    assert block.attn_fwd == pytest.approx(dense / 2 / g.micro_batch)
    assert attn.flops_fwd in (pytest.approx(dense), pytest.approx(dense / 2))


def test_fp8_speeds_up_gemm_heavy_plans_and_block_scaling_is_emulated():
    base = small_spec(layers=4, hidden=4096, heads=32, kv_heads=8, ffn=16384, seq=2048, batch=64, nodes=1, fp8=True)
    base["precision"]["fp8"]["keep_first_last_bf16"] = False
    p = vlac.plan(vlac.load(base))
    assert p.fp8["enabled"] and p.fp8["predicted_speedup"] > 1.2
    base["precision"]["fp8"]["recipe"] = "block"
    q = vlac.plan(vlac.load(base))
    assert q.fp8["predicted_speedup"] < 1.0 and "emulated" in q.fp8["note"]
    # the spec rejects MXFP8 on Hopper; a spec validated elsewhere can still meet a Hopper cluster
    exp = vlac.load(base)
    mx = exp.model_copy(update={"precision": exp.precision.model_copy(
        update={"fp8": exp.precision.fp8.model_copy(update={"recipe": "mxfp8"})})})
    r = vlac.plan(mx)
    assert not r.fp8["enabled"] and "Blackwell" in r.fp8["off_reason"]
