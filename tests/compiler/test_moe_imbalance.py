"""MoE routing imbalance as a cost (moe.load_factor): under dropless routing the expert-parallel
rank holding the busiest expert runs more expert GEMM rows and receives more tokens, and the
step waits for it; with a capacity, padding is charged instead and the factor changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

import vlac
from vlac.compiler.planner import Search
from vlac.spec.errors import SpecError

E, K = 8, 2  # experts, top_k


def spec(load: float, capacity: float | None = None) -> dict:
    return {"name": "moe-imbalance",
            "modalities": {"text": {"kind": "text", "tokenizer": "bpe", "vocab_size": 1000, "tokens": 126}},
            "backbone": {"layers": 2, "hidden": 128, "heads": 4, "ffn_hidden": 256, "context_length": 128},
            "moe": {"experts": E, "top_k": K, "capacity_factor": capacity, "load_factor": load},
            "data": {"mixture": [{"name": "t", "modalities": ["text"]}]},
            "train": {"seq_len": 128, "global_batch_tokens": 128 * 64},
            "cluster": {"preset": "h100-sxm", "nodes": 2, "gpus_per_node": 8}}


@pytest.fixture(scope="module")
def graph():
    return vlac.lower(vlac.load(spec(1.0)))


def profile(graph, load: float, capacity: float | None = None):
    exp = vlac.load(spec(load, capacity))
    return Search(exp, exp.cluster, graph).model.p


def moe_times(p, ep: int) -> dict[str, float]:
    t = p.times([1], [False], [1], [1], [ep], [1])
    j = next(i for i, prof in enumerate(p.profiles) if prof.moe)
    return {k: float(v[0, j]) for k, v in t.items()}


def test_the_critical_rank_holds_the_busiest_expert(graph):
    p = profile(graph, 1.6)
    load = p.critical_rank_load(np.array([1, 2, 4, 8]))
    # one rank with every expert carries the fixed total; one expert per rank carries its load;
    # between, the busiest expert and E/ep - 1 others sharing the rest evenly
    assert load[0] == pytest.approx(1.0) and load[-1] == pytest.approx(1.6)
    assert load[1] == pytest.approx((1.6 + 3 * (E - 1.6) / (E - 1)) / 4)
    assert np.all(np.diff(load) > 0)
    assert profile(graph, 1.0).critical_rank_load(np.array([8]))[0] == 1.0


def test_imbalance_slows_expert_gemms_and_all_to_alls_under_dropless_routing(graph):
    balanced, skewed = moe_times(profile(graph, 1.0), 8), moe_times(profile(graph, 1.6), 8)
    assert skewed["gemm_fwd"] > balanced["gemm_fwd"] and skewed["ep_fwd"] > balanced["ep_fwd"]
    assert skewed["attn_fwd"] == balanced["attn_fwd"]  # the rest of the layer is not routed
    # with a capacity the experts are padded to it (over-compute) and overflow is dropped
    capped = [moe_times(profile(graph, load, 1.25), 8) for load in (1.0, 1.6)]
    assert capped[0] == capped[1]


def test_load_factor_beyond_what_one_expert_can_get_names_the_field():
    with pytest.raises(SpecError) as e:
        vlac.load(spec(E / K + 0.5))
    assert "load_factor" in str(e.value) and "experts / top_k" in str(e.value)
    with pytest.raises(SpecError) as e:
        vlac.load(spec(0.5))
    assert "load_factor" in str(e.value)


def test_the_plan_waits_for_the_busiest_rank(graph):
    pins = {"dp": 16, "ep": 8, "tp": 1, "pp": 1, "cp": 1, "microbatch_size": 1, "recompute": "none"}
    plans = [vlac.plan(vlac.load(spec(load)), graph=graph, pin=pins).chosen for load in (1.0, 1.6)]
    assert plans[1].time["ep_comm"] > plans[0].time["ep_comm"] and plans[1].time["compute"] > plans[0].time["compute"]
    assert plans[1].step_time_s > plans[0].step_time_s
