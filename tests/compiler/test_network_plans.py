"""The spec's fabric reaches the cost model: the same layout across nodes spends more time in its
data- and expert-parallel collectives on 4 NDR NICs per node than on 8, and more on HDR than NDR."""

import pytest

import vlac
from test_planner_properties import small_spec

# dp spans both nodes; ep 16 puts experts on both nodes, so both groups cross the fabric
PIN = {"tp": 1, "pp": 1, "cp": 1, "ep": 16, "zero": 0, "microbatch_size": 1, "recompute": "none"}


def plan_on(network: dict):
    spec = small_spec(layers=2, hidden=128, heads=4, kv_heads=2, ffn=256, seq=128, batch=32, experts=16,
                      nodes=2, gpus_per_node=8)
    spec["cluster"]["network"] = network
    exp = vlac.load(spec)
    return vlac.plan(exp, pin=PIN).chosen


@pytest.fixture(scope="module")
def plans():
    return {name: plan_on(net) for name, net in {
        "8x-ndr": {"fabric": "ib-ndr", "nics_per_node": 8},
        "4x-ndr": {"fabric": "ib-ndr", "nics_per_node": 4},
        "8x-hdr": {"fabric": "ib-hdr", "nics_per_node": 8},
    }.items()}


def test_fewer_nics_slow_the_inter_node_collectives(plans):
    eight, four = plans["8x-ndr"], plans["4x-ndr"]
    assert eight.layout.short() == four.layout.short()
    assert four.time["ep_comm"] > eight.time["ep_comm"] > 0
    assert four.time["dp_comm"] > eight.time["dp_comm"] > 0
    assert four.step_time_s > eight.step_time_s


def test_a_slower_fabric_slows_them_too(plans):
    assert plans["8x-hdr"].time["ep_comm"] > plans["8x-ndr"].time["ep_comm"]
    assert plans["8x-hdr"].time["dp_comm"] > plans["8x-ndr"].time["dp_comm"]
