"""Each pipeline rank hides its data-parallel traffic behind its own compute (issue 18): more
work on one rank (recompute) never makes the predicted step faster."""

from itertools import product

import numpy as np
import pytest

import vlac
from test_cost_model import one_row as row
from test_planner_properties import small_spec
from vlac.compiler.planner import Search
from vlac.compiler.search_space import SCHEDULE_CODES, Space


def step(search: Search, space: Space, policy) -> float:
    ev = search.model.evaluate(space, forced=np.array([policy]), time_all=True)
    return float(ev.step[0])


def test_full_recompute_on_a_non_critical_rank_is_not_faster_flagship():
    """The issue's runnable flagship layout: dp16 tp4+sp pp4 ep4 etp4 zero3 mb1x64 interleaved
    v4. With the slowest rank's compute as every rank's window, recompute none/full/none/none was
    predicted 1.951 s against 2.177 s with none anywhere."""
    exp = vlac.load("examples/vla_10b_moe_h100.yaml")
    search = Search(exp, exp.cluster, vlac.lower(exp))
    space = row(dp=16, tp=4, sp=True, pp=4, ep=4, etp=4, zero=3, mb=1, m=64,
                sched=SCHEDULE_CODES.index("interleaved_1f1b"), v=4)
    none = step(search, space, [0, 0, 0, 0])
    assert step(search, space, [0, 2, 0, 0]) >= none
    assert step(search, space, [2, 2, 2, 2]) > step(search, space, [1, 1, 1, 1]) > none


@pytest.fixture(scope="module")
def small_moe():
    exp = vlac.load(small_spec(layers=8, hidden=256, heads=8, kv_heads=4, ffn=512, seq=256, batch=64, experts=4,
                               nodes=4, gpus_per_node=8))
    return Search(exp, exp.cluster, vlac.lower(exp))


@pytest.mark.parametrize("zero,raf", [(0, True), (1, True), (2, True), (3, True), (3, False)])
@pytest.mark.parametrize("sched,v", [("1f1b", 1), ("interleaved_1f1b", 2), ("gpipe", 1), ("zero_bubble", 1)])
def test_step_is_monotone_in_every_ranks_recompute(small_moe, zero, raf, sched, v):
    policies = np.array(list(product(range(3), repeat=4)))
    one = row(dp=8, tp=1, pp=4, ep=2, zero=zero, raf=raf, mb=1, m=8, sched=SCHEDULE_CODES.index(sched), v=v)
    space = one.take(np.zeros(len(policies), np.int64))
    steps = small_moe.model.evaluate(space, forced=policies, time_all=True).step
    at = {tuple(p): s for p, s in zip(policies, steps)}
    for p in at:
        for r in range(4):
            if p[r] < 2:
                more = p[:r] + (p[r] + 1,) + p[r + 1:]
                assert at[more] >= at[p] * (1 - 1e-12), (p, r)
