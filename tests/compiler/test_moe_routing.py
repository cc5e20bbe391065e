"""Which ranks route an MoE layer's tokens (compiler/moe_routing.py): one rule for the cost model
and the runtime, on scalars and on columns alike; an MoE layer with whole experts under context
parallelism, dropless or with a capacity, is costed on its rank's own tokens without the cp gather,
one with experts split by width gathered."""

from pathlib import Path

import numpy as np
import pytest

import vlac
from vlac.compiler.moe_routing import ep_fold_ranks, routes_own_tokens, token_shards
from vlac.compiler.planner import Search
from vlac.runtime.parallel.support import not_as_timed

ROOT = Path(__file__).resolve().parents[2]
FLAGSHIP = ROOT / "examples" / "vla_10b_moe_h100.yaml"


@pytest.mark.parametrize("etp, tp, sp, cp, expect", [
    (1, 2, True, 2, (2, 2)),  # whole experts: split over tp (sp) and cp, dropless or with a capacity
    (1, 2, False, 2, (1, 2)),  # without sp every tp rank holds the whole sequence
    (2, 2, True, 2, (1, 1)),  # experts split by width need every token of the tp group
    (1, 4, True, 1, (4, 1)),
    (1, 1, False, 1, (1, 1)),
])
def test_token_shards_on_scalars_and_columns(etp, tp, sp, cp, expect):
    assert tuple(int(x) for x in token_shards(etp, tp, sp, cp)) == expect
    assert bool(routes_own_tokens(etp)) == (etp == 1)
    cols = [np.array([v, 1]) for v in (etp, tp)] + [np.array([sp, False])] + [np.array([cp, 1])]
    tp_shards, cp_shards = token_shards(*cols)
    assert (tp_shards.tolist(), cp_shards.tolist()) == ([expect[0], 1], [expect[1], 1])
    # expert parallelism folds over the dp ranks and those shards
    assert int(ep_fold_ranks(etp, 3, tp, sp, cp)) == 3 * expect[0] * expect[1]


def test_tp_with_sp_is_as_timed_for_capacity_layers_without_sp_marked():
    """A layer with a capacity routes its own sequence shard under sp, with cp too (runtime/moe.py
    numbers its copies in the whole sequence's order): as another stack times it; without sp it is
    marked."""
    layout = {"dp": 4, "tp": 2, "cp": 1, "pp": 1, "ep": 1, "etp": 1, "zero": 1, "sp": True, "m": 4,
              "schedule": "1f1b", "fp8": False}
    capacity = vlac.load(FLAGSHIP, ["moe.capacity_factor=1.25", "stack.preset=megatron-te"])
    assert not any("tensor-parallel" in m for m in not_as_timed(capacity, layout))
    assert any("tensor-parallel" in m for m in not_as_timed(capacity, {**layout, "sp": False}))
    assert not any("tensor-parallel" in m for m in not_as_timed(capacity, {**layout, "cp": 2, "dp": 2}))


@pytest.fixture(scope="module")
def dropless_profile():
    exp = vlac.load(FLAGSHIP, ["moe.capacity_factor=null"])
    prof = Search(exp, exp.cluster, vlac.lower(exp)).model.p
    return exp, prof, next(j for j, p in enumerate(prof.profiles) if p.moe)


def _times(prof, tp=1, cp=1, ep=1, mb=2):
    return prof.times(np.array([tp]), np.array([tp > 1]), np.array([cp]), np.array([mb]), np.array([ep]),
                      np.array([1]))


def test_a_layer_under_cp_is_costed_on_its_own_tokens(dropless_profile):
    """vlac's runtime routes an MoE layer's own chunks under cp, dropless or with a capacity: its
    GEMMs (router, shared and routed experts) take half as long at cp 2 and no cp gather of its
    input is charged; with experts split by width it is gathered (every rank runs the whole
    micro-batch)."""
    exp, prof, j = dropless_profile
    one, cp2 = _times(prof), _times(prof, cp=2)
    assert cp2["gemm_fwd"][0, j] == pytest.approx(one["gemm_fwd"][0, j] / 2, rel=0.05)
    assert _times(prof, cp=2, ep=8)["ep_fwd"][0, j] < _times(prof, ep=8)["ep_fwd"][0, j]
    prof.capacity_factor = 1.25
    try:
        capacity = _times(prof, cp=2)
        # its own tokens, and only the copies it keeps cross the all-to-all, not every slot
        # (every slot would be half the tokens times the slots per copy, > 1; latency adds a little)
        ratio = _times(prof, cp=2, ep=8)["ep_fwd"][0, j] / _times(prof, ep=8)["ep_fwd"][0, j]
        assert capacity_slots_of(prof) > 1.2 and ratio < 0.5 / capacity_slots_of(prof) * 1.1
    finally:
        prof.capacity_factor = None
    assert capacity["gemm_fwd"][0, j] == pytest.approx(cp2["gemm_fwd"][0, j], rel=0.05)
    assert capacity["cp"][0, j] == pytest.approx(cp2["cp"][0, j])  # attention's K/V exchange only
    gathered = prof.times(np.array([2]), np.array([True]), np.array([2]), np.array([2]), np.array([1]),
                          np.array([2]))  # etp 2: gathered over cp and tp
    assert gathered["cp"][0, j] > cp2["cp"][0, j] > 0
    # tp and cp together: a quarter of the micro-batch per rank
    both = _times(prof, tp=2, cp=2)
    moe = [g for g in prof.profiles[j].gemms if g.moe_part]
    shared = sum(g.flops for g in moe)
    assert shared > 0 and both["gemm_fwd"][0, j] == pytest.approx(one["gemm_fwd"][0, j] / 4, rel=0.05)


def capacity_slots_of(prof) -> float:
    from vlac.compiler.layer_times import capacity_slots

    return float(capacity_slots(np.array([2.0 * prof.seq_len]), prof.experts, prof.top_k, prof.capacity_factor)[0])


def test_cp_is_as_timed_for_dropless_and_capacity_layers():
    layout = {"dp": 4, "tp": 1, "cp": 2, "pp": 1, "ep": 1, "etp": 1, "zero": 1, "sp": False, "m": 4,
              "schedule": "1f1b", "fp8": False}
    dropless = vlac.load(FLAGSHIP, ["moe.capacity_factor=null", "stack.preset=megatron-te"])
    capacity = vlac.load(FLAGSHIP, ["moe.capacity_factor=1.25", "stack.preset=megatron-te"])
    assert not_as_timed(dropless, layout) == [] and not_as_timed(capacity, layout) == []


def test_ep_may_span_tp_and_cp_but_not_tp_ranks_that_share_tokens():
    """One limit for dropless and capacity layers: ep folds over dp x cp x tp (tp under sp), and
    an etp > 1 layout folds it over dp only."""
    from vlac.runtime.parallel.support import excluded

    dropless = vlac.load(FLAGSHIP, ["moe.capacity_factor=null"])
    capacity = vlac.load(FLAGSHIP)
    base = {"dp": 1, "tp": 2, "cp": 2, "pp": 1, "ep": 4, "etp": 1, "zero": 0, "sp": True, "m": 4,
            "schedule": "1f1b", "fp8": False}
    rows = [base, {**base, "sp": False}, {**base, "etp": 2, "ep": 2}]
    cols = {k: np.array([r[k] for r in rows]) for k in base}
    got = {name: mask.tolist() for name, mask in excluded(dropless, cols).items()}
    assert got == {"expert_parallel_outside_token_ranks": [False, True, True],
                   "expert_tensor_parallel_dropless": [False, False, True]}
    got = {name: mask.tolist() for name, mask in excluded(capacity, cols).items()}
    assert got == {"expert_parallel_outside_token_ranks": [False, True, True]}
