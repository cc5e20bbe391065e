"""The fast path's lower bound on a layout's step time (vlac.search.step_bound.StepBound, every shape refined): never
above the cost model's step for any layout that fits, and the slowest-rank term (the cost model's
own stage split: some rank holds at least ceil(layers / pp) decoder layers) tightens it beyond the
mean over ranks. A bound above some step could set aside the planner's choice; the fast-vs-full
comparisons in test_fast.py check the choices themselves."""

import copy
from pathlib import Path

import numpy as np
import pytest

from vlac.compiler import planner as planner_mod
from vlac.compiler.graph_cache import GraphCache
from vlac.compiler.search_space import SCHEDULE_CODES
from vlac.search.evaluate import base_mapping
from vlac.search.fast_plan import LayerTimes, LayoutSpace
from vlac.search.step_bound import StepBound
from vlac.spec import load

FLAGSHIP = Path(__file__).resolve().parents[2] / "examples" / "vla_10b_moe_h100.yaml"


def evaluated(profile: str | None, refined: bool = True, **backbone_and_moe):
    """The planner's full evaluation of the flagship with these fields, and each row's bound:
    every shape refined (refine_all), or none (StepBound's first, stage-split-free bound)."""
    data, _ = base_mapping(FLAGSHIP, profile, [])
    data = copy.deepcopy(data)
    for k, v in backbone_and_moe.items():
        section, field = k.split("__")
        data[section][field] = v
    exp = load(data)
    search = planner_mod.Search(exp, exp.cluster, GraphCache().lower(exp))
    space, ev = search.run({})
    ls = LayoutSpace.of(space, "test")
    bound = np.empty(len(space))
    times = LayerTimes(search.model.p.times)
    per_group = StepBound(search.model, ls, times).refine_all() if refined else StepBound(search.model, ls, times).value
    for g, b in enumerate(per_group):  # each group's bound to its rows
        bound[ls.order[ls.start[g]:ls.start[g + 1]]] = b
    return search, space, ev, bound


@pytest.mark.parametrize("profile,shape", [
    ("tiny", dict(backbone__layers=7)),
    ("tiny", dict(backbone__layers=12, moe__experts=8, moe__top_k=1)),
    (None, dict(backbone__layers=18, moe__experts=16, moe__top_k=2)),
])
def test_the_bound_never_exceeds_a_fitting_layouts_step(profile, shape):
    search, space, ev, bound = evaluated(profile, **shape)
    timed = ev.fits & ev.timed
    assert timed.sum() > 20 and (space.cols["pp"][timed] > 1).any()
    assert (bound[timed] <= ev.step[timed]).all()
    # and it is tight somewhere: the best layouts sit within a few % of their bound
    assert (ev.step[timed] / bound[timed]).min() < 1.01


@pytest.mark.parametrize("profile,shape", [
    ("tiny", dict(backbone__layers=7)),
    (None, dict(backbone__layers=18, moe__experts=16, moe__top_k=2)),
])
def test_the_bound_before_any_stage_split_never_exceeds_a_fitting_layouts_step(profile, shape):
    # the mean over ranks and the end ranks (embeddings or head, and a decoder layer per chunk):
    # what every group starts at, and what the groups of shapes never refined keep
    search, space, ev, bound = evaluated(profile, refined=False, **shape)
    timed = ev.fits & ev.timed
    assert timed.sum() > 20 and (space.cols["pp"][timed] > 1).any()
    assert (bound[timed] <= ev.step[timed]).all()
    _, _, _, tight = evaluated(profile, **shape)
    assert (bound <= tight * (1 + 1e-12)).all() and (bound < tight).any()


def test_refining_shapes_on_demand_keeps_the_lowest_bound_and_each_band():
    # StepBound refines only the shapes with a group below what is asked: the lowest bound and
    # the groups below any limit are those of the bound with every shape refined
    search, space, ev, _ = evaluated(None, backbone__layers=18, moe__experts=16, moe__top_k=2)
    ls = LayoutSpace.of(space, "lazy")
    times = LayerTimes(search.model.p.times)
    full = StepBound(search.model, ls, times).refine_all()
    lazy = StepBound(search.model, ls, times)
    assert lazy.lowest() == full.min()
    for share in (1.0, 1.05, 1.2):
        assert np.array_equal(lazy.below(full.min() * share), full <= full.min() * share)
    assert not lazy.refined.all()  # some shapes' groups all lie above 1.2 x the lowest before refining


def test_the_slowest_rank_term_tightens_deep_pipelines():
    # 18 layers over pp 16: some rank holds 2 layers where the mean is 1.125; the bound of those
    # layouts must exceed the mean-over-ranks bound by about that factor on its t_max term
    search, space, ev, bound = evaluated(None, backbone__layers=18, moe__experts=16, moe__top_k=2)
    c = space.cols
    p = search.model.p
    ls = LayoutSpace.of(space, "mean")
    parts = LayerTimes(search.model.p.times).per_layer_bound(search.model, ls)
    total = (parts @ np.bincount(p.sequence, minlength=p.n_keys))
    combo = np.empty(len(space), np.int64)
    for g in range(len(ls.combo)):
        combo[ls.order[ls.start[g]:ls.start[g + 1]]] = ls.combo[g]
    deep = (c["pp"] == 16) & (c["sched"] == SCHEDULE_CODES.index("1f1b"))
    mean_only = total[combo] / c["pp"] * (c["m"] + c["pp"] - 1)  # (m + pp - 1) t_mean
    assert deep.any()
    assert (bound[deep] > 1.05 * mean_only[deep]).all()


def test_few_layouts_are_left_to_cost():
    # what the fast path must cost is every layout whose bound is below the best step: 207 of the
    # 70,320 at 18 layers with the slowest rank, sends and optimizer in the bound (1,007 with t'
    # bounded by the mean and the cheapest layers only, no sends, no optimizer)
    search, space, ev, bound = evaluated(None, backbone__layers=18, moe__experts=16, moe__top_k=2)
    timed = ev.fits & ev.timed
    assert (bound <= ev.step[timed].min()).sum() <= 300
