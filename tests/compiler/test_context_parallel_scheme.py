"""The stack's context-parallel scheme (`stack.context_parallel`, compiler/context_parallel_costs.py):
a p2p ring hides its K/V exchange behind the attention but merges each step's partial output on
the compute stream; an all-gather adds no merges but is exposed."""

import numpy as np
import pytest

import vlac
from test_cost_model import one_row as row
from test_planner_properties import small_spec
from vlac.compiler.context_parallel_costs import merge_bytes
from vlac.compiler.planner import Search
from vlac.spec.stack import PRESETS, Stack


def test_merge_bytes_count_each_step_of_the_ring():
    # cp 2, bf16: forward 2 steps x (read partial, read and write running) + the zeroed running
    # output = 14 bytes per query element; backward the same for dQ, and dK/dV on 1 + 1/2 steps
    fwd, bwd = merge_bytes("p2p", 1000.0, 100.0, 2, np.array([2.0]))
    assert fwd[0] == pytest.approx(14 * 1000)
    assert bwd[0] == pytest.approx(14 * 1000 + (1.5 * 6 + 2) * 100)
    # four steps: the K/V side grows by half a step per extra step
    fwd4, bwd4 = merge_bytes("p2p", 1000.0, 100.0, 2, np.array([4.0]))
    assert fwd4[0] == pytest.approx(26 * 1000)
    assert bwd4[0] == pytest.approx(26 * 1000 + (2.5 * 6 + 2) * 100)
    # no ring without cp, and an all-gather merges nothing
    assert merge_bytes("p2p", 1000.0, 100.0, 2, np.array([1.0]))[0][0] == 0.0
    assert not np.any(merge_bytes("all_gather", 1000.0, 100.0, 2, np.array([4.0]))[1])


def test_presets_and_override():
    assert PRESETS["megatron-te"].context_parallel == "p2p"
    assert PRESETS["torchtitan-torchao"].context_parallel == "p2p"
    assert PRESETS["vlac"].context_parallel == "all_gather"  # runtime/parallel/context_parallel.py
    assert Stack(preset="megatron-te", context_parallel="all_gather").resolved().context_parallel == "all_gather"
    with pytest.raises(Exception, match="context_parallel"):
        Stack(preset="megatron-te", context_parallel="ring")


def _search(scheme: str) -> Search:
    spec = small_spec(layers=4, hidden=1024, heads=8, kv_heads=2, ffn=2816, seq=8192, batch=16)
    spec["stack"] = {"preset": "megatron-te", "context_parallel": scheme}
    exp = vlac.load(spec)
    return Search(exp, exp.cluster, vlac.lower(exp))


@pytest.fixture(scope="module")
def schemes():
    return {s: _search(s) for s in ("p2p", "all_gather")}


def _evaluate(search: Search, cp: int):
    space = row(dp=8 // cp, cp=cp, mb=1, m=16 * cp // 8)
    return search.model.evaluate(space, forced=np.array([[0]]), time_all=True, detail=True)


def test_p2p_merges_on_the_compute_stream_all_gather_exposes_its_gather(schemes):
    p2p, gathered = (_evaluate(schemes[s], 2) for s in ("p2p", "all_gather"))
    # the ring's merges are memory-bound compute-stream work the all-gather does not do
    assert p2p.time["elementwise"][0] > gathered.time["elementwise"][0]
    # the all-gather is charged whole; the ring's exchange hides behind the attention
    assert gathered.time["cp_comm"][0] > p2p.time["cp_comm"][0] > 0


def test_schemes_agree_without_context_parallelism(schemes):
    a, b = (_evaluate(schemes[s], 1) for s in ("p2p", "all_gather"))
    assert a.step[0] == b.step[0]
    assert a.time["cp_comm"][0] == b.time["cp_comm"][0] == 0
