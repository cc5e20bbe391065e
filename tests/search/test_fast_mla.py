"""The search's fast path on multi-head latent attention: the latent widths stay in the topology
(their graphs are never combined across them), combined shapes of one MLA topology equal direct
lowering node by node, and a search over depth, width and latent rank plans as the full path does."""

import random
from pathlib import Path

from vlac.compiler.graph_cache import GraphCache, graph_differences, with_depth
from vlac.compiler.lower import lower
from vlac.search import Search
from vlac.search.fast import _architecture_key
from vlac.search.shape_fit import ShapeFit, topology_key

from test_fast import check_sample_of
from test_shape_fit import costs

FLAGSHIP = Path(__file__).resolve().parents[2] / "examples" / "vla_10b_moe_h100.yaml"
MLA = ["backbone.kv_heads=null", "backbone.qk_norm=false",
       "backbone.mla={q_lora_rank: 32, kv_lora_rank: 16, qk_rope_head_dim: 16, qk_nope_head_dim: 16, v_head_dim: 16}"]


def _search(space):
    return Search(FLAGSHIP, space, profile="tiny", overrides=MLA, objective="max:tokens_per_s")


def test_latent_widths_are_part_of_the_topology():
    s = _search({"moe.experts": [2]})
    a = s.evaluator.experiment({"backbone.hidden": 64})
    b = s.evaluator.experiment({"backbone.hidden": 96, "backbone.mla.kv_lora_rank": 32})
    c = s.evaluator.experiment({"backbone.hidden": 96})
    key = lambda e: topology_key(_architecture_key(e))  # noqa: E731
    assert key(a) == key(c) != key(b)


def test_combined_mla_graphs_equal_direct_lowering():
    s = _search({"moe.experts": [2]})
    fit, cache = ShapeFit(verify_first=False), GraphCache()
    grid = [(h, e) for h in (64, 96, 128) for e in (2, 4, 8)]
    random.Random(1).shuffle(grid)
    combined = 0
    for h, e in grid:
        exp = with_depth(s.evaluator.experiment({"backbone.hidden": h, "moe.experts": e}), 3)
        topo = topology_key(_architecture_key(exp))
        g = fit.combine(topo, exp)
        if g is not None:
            direct = lower(exp)
            assert graph_differences(g, direct) == [], (h, e)
            assert [costs(n) for n in g.nodes] == [costs(n) for n in direct.nodes], (h, e)
            combined += 1
        else:
            fit.add(topo, exp, cache.lower(exp))
    assert combined >= 1


def test_a_search_over_mla_plans_as_the_full_path_does():
    space = {"backbone.layers": [2, 3, 5], "backbone.mla.kv_lora_rank": [16, 32], "moe.experts": [2, 4]}
    s = _search(space)
    assert s.evaluator.fast
    cands = []
    while (c := s.ask()) is not None:
        cands.append(c)
    assert check_sample_of(s, random.Random(0).sample(cands, 4)) == 4
    assert s.evaluator.fast_path.stats["full_path"] == 0
