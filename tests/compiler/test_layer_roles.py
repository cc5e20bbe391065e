"""One notion of a decoder layer's role (vlac.compiler.layer_roles), read by the graph cache (edge
policy off in its references) and the search's closed-form costs (edge policy as the spec says),
and the smallest depth whose layers show every role a deeper model needs."""

from pathlib import Path

import vlac
from vlac.compiler.graph_cache import GraphCache
from vlac.compiler.layer_roles import layer_kinds, reference_depth, roles, with_depth

FLAGSHIP = Path(__file__).resolve().parents[2] / "examples" / "vla_10b_moe_h100.yaml"


def test_roles_name_the_layer_before_and_the_last_only_under_the_edge_policy():
    kinds = ("dense", "moe", "dense", "moe")
    assert roles(kinds, edges=False) == [(None, "dense", False), ("dense", "moe", False), ("moe", "dense", False),
                                         ("dense", "moe", False)]
    assert roles(kinds, edges=True)[-1] == ("dense", "moe", True)
    assert roles(("moe",), edges=True) == [(None, "moe", True)]


def test_reference_depth_is_the_smallest_showing_every_role_and_the_last_kind():
    every_moe = vlac.load(FLAGSHIP, ["backbone.layers=24"], profile="tiny")
    assert reference_depth(every_moe, edges=False) == 2  # first, then moe after moe
    assert reference_depth(every_moe, edges=True) == 3  # and a last layer of its own
    # every second layer MoE: dense, moe, dense, moe, ... ending on MoE at even depths
    alternating = vlac.load(FLAGSHIP, ["backbone.layers=10", "moe.layers=every:2"], profile="tiny")
    assert layer_kinds(alternating)[-2:] == ("dense", "moe")
    assert reference_depth(alternating, edges=False) == 4  # moe after dense at depth 2 lacks dense after moe
    odd = with_depth(alternating, 9)
    assert reference_depth(odd, edges=True) == 5  # ends on a dense layer: the last role (moe, dense)
    for exp, edges in ((every_moe, True), (alternating, False), (odd, True)):
        shallow = layer_kinds(with_depth(exp, reference_depth(exp, edges)))
        assert set(roles(shallow, edges)) >= set(roles(layer_kinds(exp), edges))


def test_the_graph_cache_lowers_one_reference_for_alternating_layers():
    cache = GraphCache(verify=True)  # raises if a derived graph differs from direct lowering
    for layers in (6, 9, 4):
        cache.lower(vlac.load(FLAGSHIP, [f"backbone.layers={layers}", "moe.layers=every:2"], profile="tiny"))
    # depth 6 ends on MoE (reference at 4), 9 on dense (one more reference, at 3)
    assert cache.stats.lowered == 2 + 3 and cache.stats.derived == 3
