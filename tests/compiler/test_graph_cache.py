"""The graph cache: a graph derived from a family reference equals a direct lowering."""

import json
from pathlib import Path

import pytest
import torch.fx as fx

import vlac
from vlac.compiler.graph_cache import EDGE_LAYER_REASON, DerivedGraph, GraphCache, graph_differences

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FLAGSHIP = EXAMPLES / "vla_10b_moe_h100.yaml"


def _plan_json(exp, graph) -> str:
    return json.dumps(vlac.plan(exp, graph=graph).to_json(), sort_keys=True)


@pytest.fixture(scope="module")
def cache():
    return GraphCache()


@pytest.mark.parametrize("overrides", [
    ["backbone.layers=1"],
    ["backbone.layers=5"],
    ["backbone.layers=5", "moe.layers=every:2"],
    ["backbone.layers=4", "moe.layers=from:1"],
    ["backbone.layers=6", "moe.layers=[1, 4]", "precision.fp8.keep_first_last_bf16=false"],
])
def test_derived_graph_equals_direct_lowering(cache, overrides):
    exp = vlac.load(FLAGSHIP, overrides, profile="tiny")
    derived, direct = cache.lower(exp), vlac.lower(exp)
    assert isinstance(derived, DerivedGraph)
    assert graph_differences(derived, direct) == []
    # the same per-layer figures the planner reads, and the same plan, byte for byte
    for a, b in zip(derived.layers(), direct.layers()):
        assert (a.layer, a.params, a.flops_fwd, a.flops_bwd, a.flops_fp8, a.saved) == \
               (b.layer, b.params, b.flops_fwd, b.flops_bwd, b.flops_fp8, b.saved)
    assert (derived.params_total, derived.params_active, derived.params_expert) == \
           (direct.params_total, direct.params_active, direct.params_expert)
    assert _plan_json(exp, derived) == _plan_json(exp, direct)


def test_fp8_edge_policy_is_applied_per_layer(cache):
    exp = vlac.load(FLAGSHIP, ["backbone.layers=4"], profile="tiny")
    g = cache.lower(exp)
    reasons = {layer: {n.fp8_reason for n in g.nodes if n.layer == layer and n.kind == "gemm"} for layer in range(4)}
    assert EDGE_LAYER_REASON in reasons[0] and EDGE_LAYER_REASON in reasons[3]
    assert EDGE_LAYER_REASON not in reasons[1] | reasons[2]
    assert any(n.fp8_eligible for n in g.nodes if n.layer in (1, 2))
    off = cache.lower(vlac.load(FLAGSHIP, ["backbone.layers=4", "precision.fp8.keep_first_last_bf16=false"], profile="tiny"))
    assert not any(n.fp8_reason == EDGE_LAYER_REASON for n in off.nodes)


def test_a_family_is_lowered_once():
    cache = GraphCache()
    for layers in (2, 3, 4, 6):
        cache.lower(vlac.load(FLAGSHIP, [f"backbone.layers={layers}"], profile="tiny"))
    # one shallow reference for the whole family; every depth assembled from it
    assert cache.stats.lowered == 1 and cache.stats.derived == 4


def test_plan_only_fields_share_one_graph():
    cache = GraphCache()
    a = cache.lower(vlac.load(FLAGSHIP, profile="tiny"))
    b = cache.lower(vlac.load(FLAGSHIP, ["cluster.nodes=4", "train.total_tokens=1M", "name=other"], profile="tiny"))
    assert cache.stats.shared == 1 and b.nodes is a.nodes and b.experiment_name == "other"


def test_dense_models_derive_too():
    cache = GraphCache(verify=True)  # raises if a derived graph differs from direct lowering
    for layers in (1, 3):
        cache.lower(vlac.load(EXAMPLES / "dense_text_1b.yaml", [f"backbone.layers={layers}"], profile="tiny"))
    assert cache.stats.derived == 2


def test_late_fusion_is_lowered_directly():
    cache = GraphCache()
    exp = vlac.load(EXAMPLES / "flamingo.yaml", profile="tiny")
    g = cache.lower(exp)
    assert not isinstance(g, DerivedGraph) and cache.stats.lowered == 1
    assert any("late fusion" in why for why in cache.stats.not_derivable)
    assert graph_differences(g, vlac.lower(exp)) == []


def test_derived_model_is_the_top_level_graph_on_demand(cache):
    exp = vlac.load(FLAGSHIP, ["backbone.layers=3"], profile="tiny")
    g = cache.lower(exp)
    model = g.model  # lowers the experiment directly once
    assert isinstance(model, fx.GraphModule) and g.model is model
    assert "3 layers" in repr(g)
