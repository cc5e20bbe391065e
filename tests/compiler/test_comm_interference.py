"""Communication hidden behind compute still slows it (compiler/data_parallel.py): the NVLink
phase of a data-parallel NCCL ring costs the compute it overlaps NVLINK_OVERLAP_SLOWDOWN of its
time (HBM passes and channel SMs), a network-bound phase only OVERLAP_SLOWDOWN."""

import numpy as np
import pytest

import vlac
from test_cost_model import H100, one_row as row
from test_planner_properties import small_spec
from vlac.compiler import data_parallel
from vlac.compiler.planner import Search


def test_nvlink_phase_of_a_ring():
    nbytes = 1e10
    inside = float(H100.all_gather(nbytes, 8)) - float(H100._latency(8, 1))
    assert float(H100.nvlink_seconds(nbytes, 8)) == pytest.approx(inside, rel=1e-9)  # one node: all NVLink
    assert float(H100.nvlink_seconds(nbytes, 8, 8)) == 0.0  # one member per node: all network
    # eight per node over eight nodes: the intra-node phase of `_ring_seconds`, the rest is network
    nvl = H100.cluster.network.nvlink_allreduce_busbw
    across = float(H100.nvlink_seconds(nbytes, 64, 1, passes=2))
    assert across == pytest.approx(2 * 7 / 8 * nbytes / nvl, rel=1e-9)
    assert across < float(H100.all_reduce(nbytes, 64))


@pytest.fixture(scope="module")
def two_nodes():
    exp = vlac.load(small_spec(layers=4, hidden=512, heads=8, kv_heads=8, ffn=2048, seq=512, batch=64, nodes=2,
                               gpus_per_node=8))
    return Search(exp, exp.cluster, vlac.lower(exp))


def step(search, space, slowdown, monkeypatch) -> float:
    monkeypatch.setattr(data_parallel, "NVLINK_OVERLAP_SLOWDOWN", slowdown)
    return float(search.model.evaluate(space, time_all=True).step[0])


def test_zero3_inside_a_node_pays_for_its_hidden_gathers(two_nodes, monkeypatch):
    """dp 8 x pp 2 on two nodes: each data-parallel group is one node, whose ZeRO-3 gathers and
    reduce-scatters of every micro-batch hide behind its compute on NVLink: the step grows with
    NVLINK_OVERLAP_SLOWDOWN."""
    space = row(dp=8, pp=2, zero=3, mb=1, m=8)
    low, high = step(two_nodes, space, 0.1, monkeypatch), step(two_nodes, space, 0.9, monkeypatch)
    assert high > low * 1.001


def test_a_group_with_one_member_per_node_is_network_bound(two_nodes, monkeypatch):
    """tp 8 inside each node, dp 2 across the two: the data-parallel ring has no NVLink phase, so
    the NVLink slowdown does not touch it (its hidden time is charged OVERLAP_SLOWDOWN)."""
    space = row(dp=2, tp=8, sp=True, zero=3, mb=1, m=8)
    assert step(two_nodes, space, 0.1, monkeypatch) == step(two_nodes, space, 0.9, monkeypatch)


def test_hide_charges_the_given_slowdown():
    comm, window = np.array([1.0, 3.0]), np.array([2.0, 2.0])
    assert data_parallel.hide(comm, window, 0.5).tolist() == [0.5, 1.0 + 0.5 * 2.0]
    assert data_parallel.hide(comm, window).tolist() == pytest.approx(
        [data_parallel.OVERLAP_SLOWDOWN, 1.0 + data_parallel.OVERLAP_SLOWDOWN * 2.0])
