"""New architectures' graphs in closed form over the shape fields (vlac.search.shape_fit): a
combination of other shapes' lowerings equals the direct lowering exactly, node by node, and a
search whose architectures are combined plans them as the full path does."""

import random
from pathlib import Path

from vlac.compiler.graph_cache import GraphCache, with_depth, graph_differences
from vlac.compiler.lower import lower
from vlac.search import Search
from vlac.search.fast import _architecture_key
from vlac.search.shape_fit import ShapeFit, topology_key, weights

from test_fast import check_sample_of

FLAGSHIP = Path(__file__).resolve().parents[2] / "examples" / "vla_10b_moe_h100.yaml"


def costs(node) -> dict:
    return {k: v for k, v in vars(node).items() if k not in ("name", "module")}


def test_weights_reproduce_every_monomial_and_refuse_shapes_outside_the_span():
    # shapes differing in hidden (field 0) and experts (field 5): the class is {1, h, h^2, E, hE}
    base = (64, 128, 4, 2, 16, 4, 2, 64, 0)
    shape = lambda h, e: (h, *base[1:5], e, *base[6:])  # noqa: E731
    pts = [(64, 2), (96, 2), (64, 8), (96, 4)]
    assert weights([shape(*p) for p in pts], shape(128, 16)) is None  # h^2 is not determined by two widths
    pts.append((128, 2))
    w = weights([shape(*p) for p in pts], shape(128, 16))
    assert w is not None
    for f in (lambda h, e: 1, lambda h, e: h, lambda h, e: e, lambda h, e: 3 * h * e + 7, lambda h, e: h * h - e):
        assert sum(wi * f(*p) for wi, p in zip(w, pts)) == f(128, 16)
    assert weights([shape(*p) for p in pts], (*shape(128, 16)[:6], 4, *base[7:])) is None  # top_k never varied


def test_combined_graphs_equal_direct_lowering_on_held_out_shapes():
    s = Search(FLAGSHIP, {"moe.experts": [2]}, profile="tiny")
    fit, cache = ShapeFit(verify_first=False), GraphCache()
    grid = [(h, e, 2) for h in (64, 96, 128) for e in (2, 4, 8, 16)]
    random.Random(3).shuffle(grid)
    combined = 0
    for h, e, k in grid:
        exp = with_depth(s.evaluator.experiment({"backbone.hidden": h, "moe.experts": e, "moe.top_k": k}), 3)
        topo = topology_key(_architecture_key(exp))
        g = fit.combine(topo, exp)
        if g is not None:  # held out: lowered directly, not through the cache, and never added
            direct = lower(exp)
            assert graph_differences(g, direct) == [], (h, e, k)
            # every node field (top-level node names may differ from the cache's: graph_differences)
            assert [costs(n) for n in g.nodes] == [costs(n) for n in direct.nodes], (h, e, k)
            assert (g.params_active, g.boundary_bytes) == (direct.params_active, direct.boundary_bytes)
            combined += 1
        else:
            fit.add(topo, exp, cache.lower(exp))
    assert combined >= 2 and fit.stats["lowered"] + combined == len(grid)


def test_a_search_plans_combined_architectures_as_the_full_path_does():
    space = {"moe.experts": [2, 4, 8, 16], "backbone.hidden": [64, 96, 128], "backbone.layers": [3, 5]}
    s = Search(FLAGSHIP, space, profile="tiny", objective="max:tokens_per_s")
    cands = []
    while (c := s.ask()) is not None:
        cands.append(c)
    list(s.evaluator.evaluate_fast(cands))
    fast = s.evaluator.fast_path
    assert fast.fit.stats["combined"] >= 2 and fast.fit.stats["verified"] == 1, fast.fit.stats
    combined = [c for c in cands if _architecture_key(s.evaluator.experiment(c.params)) in fast.combined]
    assert check_sample_of(s, random.Random(0).sample(combined, 2)) == 2


def test_the_capacity_field_is_the_runtimes_capacity():
    # shape_of computes the MoE capacity itself (the search does not import the runtime); it must
    # be what vlac.runtime.moe gives one lowered sequence, ceilings included
    from types import SimpleNamespace

    from vlac.runtime.moe import MoELayer
    from vlac.search.shape_fit import SHAPE_FIELDS, shape_of

    s = Search(FLAGSHIP, {"moe.experts": [2]})
    for experts, top_k, factor in [(8, 1, 1.25), (48, 2, 1.25), (60, 3, 1.1), (7, 2, 0.333)]:
        exp = s.evaluator.experiment({"moe.experts": experts, "moe.top_k": top_k, "moe.capacity_factor": factor})
        runtime = MoELayer.capacity(SimpleNamespace(cfg=exp.moe), exp.train.seq_len)
        assert shape_of(exp)[SHAPE_FIELDS.index("capacity")] == runtime, (experts, top_k, factor)
