"""Which ranks route an MoE layer's tokens (compiler/moe_routing.py): one rule for the cost model
and the runtime, on scalars and on columns alike; a dropless layer under context parallelism is
costed on its rank's own tokens without the cp gather, a layer with a capacity gathered."""

from pathlib import Path

import numpy as np
import pytest

import vlac
from vlac.compiler.moe_routing import ep_fold_shards, routes_own_tokens, token_shards
from vlac.compiler.planner import Search
from vlac.runtime.parallel.support import not_as_timed

ROOT = Path(__file__).resolve().parents[2]
FLAGSHIP = ROOT / "examples" / "vla_10b_moe_h100.yaml"


@pytest.mark.parametrize("dropless, etp, tp, sp, cp, expect", [
    (True, 1, 2, True, 2, (2, 2)),  # dropless, whole experts: split over tp (sp) and cp
    (True, 1, 2, False, 2, (1, 2)),  # without sp every tp rank holds the whole sequence
    (True, 2, 2, True, 2, (1, 1)),  # experts split by width need every token of the tp group
    (False, 1, 4, True, 1, (4, 1)),  # a capacity: its own sequence shard under sp
    (False, 1, 4, True, 2, (1, 1)),  # gathered over cp, so over tp as well
    (False, 1, 4, False, 2, (1, 1)),  # without sp: replicated over tp
    (True, 1, 1, False, 1, (1, 1)),
])
def test_token_shards_on_scalars_and_columns(dropless, etp, tp, sp, cp, expect):
    assert tuple(int(x) for x in token_shards(dropless, etp, tp, sp, cp)) == expect
    assert bool(routes_own_tokens(dropless, etp)) == (dropless and etp == 1)
    cols = [np.array([v, 1]) for v in (etp, tp)] + [np.array([sp, False])] + [np.array([cp, 1])]
    tp_shards, cp_shards = token_shards(dropless, *cols)
    assert (tp_shards.tolist(), cp_shards.tolist()) == ([expect[0], 1], [expect[1], 1])
    # expert parallelism folds over a dropless layer's shards, a capacity layer's dp ranks only
    folded = tuple(int(x) for x in ep_fold_shards(dropless, etp, tp, sp, cp))
    assert folded == (expect if dropless else (1, expect[1]))


def test_tp_with_sp_is_as_timed_for_capacity_layers_without_sp_marked():
    """A layer with a capacity routes its own sequence shard under sp (runtime/moe.py ranks its
    copies in the whole sequence's order): as another stack times it; without sp it is marked."""
    layout = {"dp": 4, "tp": 2, "cp": 1, "pp": 1, "ep": 1, "etp": 1, "zero": 1, "sp": True, "m": 4,
              "schedule": "1f1b", "fp8": False}
    capacity = vlac.load(FLAGSHIP, ["moe.capacity_factor=1.25", "stack.preset=megatron-te"])
    assert not any("tensor-parallel" in m for m in not_as_timed(capacity, layout))
    assert any("tensor-parallel" in m for m in not_as_timed(capacity, {**layout, "sp": False}))
    assert any("tensor-parallel" in m for m in not_as_timed(capacity, {**layout, "cp": 2, "dp": 2}))


@pytest.fixture(scope="module")
def dropless_profile():
    exp = vlac.load(FLAGSHIP, ["moe.capacity_factor=null"])
    prof = Search(exp, exp.cluster, vlac.lower(exp)).model.p
    return exp, prof, next(j for j, p in enumerate(prof.profiles) if p.moe)


def _times(prof, tp=1, cp=1, ep=1, mb=2):
    return prof.times(np.array([tp]), np.array([tp > 1]), np.array([cp]), np.array([mb]), np.array([ep]),
                      np.array([1]))


def test_a_dropless_layer_under_cp_is_costed_on_its_own_tokens(dropless_profile):
    """vlac's runtime routes a dropless layer's own chunks under cp: its GEMMs (router, shared and
    routed experts) take half as long at cp 2 and the cp gather of its input is not charged; a
    layer with a capacity still gathers (every rank runs the whole micro-batch)."""
    exp, prof, j = dropless_profile
    one, cp2 = _times(prof), _times(prof, cp=2)
    assert cp2["gemm_fwd"][0, j] == pytest.approx(one["gemm_fwd"][0, j] / 2, rel=0.05)
    assert _times(prof, cp=2, ep=8)["ep_fwd"][0, j] < _times(prof, ep=8)["ep_fwd"][0, j]
    prof.capacity_factor = 1.25
    try:
        gathered = _times(prof, cp=2)
    finally:
        prof.capacity_factor = None
    assert gathered["gemm_fwd"][0, j] > cp2["gemm_fwd"][0, j] * 1.1  # its MoE GEMMs not halved
    assert gathered["cp"][0, j] > cp2["cp"][0, j] > 0  # both keep attention's K/V exchange
    # tp and cp together: a quarter of the micro-batch per rank
    both = _times(prof, tp=2, cp=2)
    moe = [g for g in prof.profiles[j].gemms if g.moe_part]
    shared = sum(g.flops for g in moe)
    assert shared > 0 and both["gemm_fwd"][0, j] == pytest.approx(one["gemm_fwd"][0, j] / 4, rel=0.05)


def test_cp_is_as_timed_for_dropless_layers_and_marked_for_capacity_ones():
    layout = {"dp": 4, "tp": 1, "cp": 2, "pp": 1, "ep": 1, "etp": 1, "zero": 1, "sp": False, "m": 4,
              "schedule": "1f1b", "fp8": False}
    dropless = vlac.load(FLAGSHIP, ["moe.capacity_factor=null", "stack.preset=megatron-te"])
    capacity = vlac.load(FLAGSHIP, ["moe.capacity_factor=1.25", "stack.preset=megatron-te"])
    assert not any("context-parallel" in m for m in not_as_timed(dropless, layout))
    assert any("context-parallel" in m for m in not_as_timed(capacity, layout))


def test_dropless_ep_may_span_tp_and_cp_but_not_tp_ranks_that_share_tokens():
    """expert_parallel_outside_dp concerns layers with a capacity; a dropless layer folds ep over
    dp x cp x tp (tp under sp), and an etp > 1 layout is set aside by its own limit only."""
    from vlac.runtime.parallel.support import excluded

    dropless = vlac.load(FLAGSHIP, ["moe.capacity_factor=null"])
    capacity = vlac.load(FLAGSHIP)
    base = {"dp": 1, "tp": 2, "cp": 2, "pp": 1, "ep": 4, "etp": 1, "zero": 0, "sp": True, "m": 4,
            "schedule": "1f1b", "fp8": False}
    rows = [base, {**base, "sp": False}, {**base, "etp": 2, "ep": 2}]
    cols = {k: np.array([r[k] for r in rows]) for k in base}
    got = {name: mask.tolist() for name, mask in excluded(dropless, cols).items()}
    assert got == {"expert_parallel_outside_token_ranks": [False, True, False],
                   "expert_tensor_parallel_dropless": [False, False, True]}
    assert excluded(capacity, cols)["expert_parallel_outside_dp"].tolist() == [True, True, True]
