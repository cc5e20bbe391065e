"""The fast path (vlac.search.fast) on chunked attention and attention sinks: depths with chunked
and global layers derived from one lowering per architecture (the "+chunk" layer role), shapes
combined across head counts with the sink logits and the sink's key column, each candidate equal
to the full path (lower, plan every layout): parameters and FLOPs exactly, times within 0.1 %."""

from pathlib import Path

from vlac.search import Search

from test_fast import check_sample

DENSE = Path(__file__).resolve().parents[2] / "examples" / "dense_text_1b.yaml"


def test_fast_path_matches_the_full_path_on_chunks_and_sinks():
    space = {"backbone.layers": [2, 3, 5], "backbone.attention_chunk": [4, 8], "backbone.attention_sinks": [True, False],
             "backbone.attention_chunk_layers": ["global_every:2", "from:1"]}
    s = Search(DENSE, space, profile="tiny", objective="max:tokens_per_s")
    assert s.evaluator.fast
    compared = check_sample(s, 6, seed=0)
    fast = s.evaluator.fast_path
    assert compared == 6 and fast.stats["decided"] == compared and fast.stats["full_path"] == 0
    assert len(fast.architectures) < compared  # depths share an architecture


def test_combined_graphs_with_sinks_and_chunks_equal_direct_lowering_on_held_out_shapes():
    """The sinks' parameters (heads), their key column's FLOPs and their bias's bytes (heads x
    S x (S+1)) are polynomials in the shape fields like every other cost: combined exactly."""
    from vlac.compiler.graph_cache import GraphCache, graph_differences, with_depth
    from vlac.compiler.lower import lower
    from vlac.search.fast import _architecture_key
    from vlac.search.shape_fit import ShapeFit, topology_key

    s = Search(DENSE, {"backbone.attention_sinks": [True]}, profile="tiny")
    fit, cache = ShapeFit(verify_first=False), GraphCache()
    combined = 0
    for hidden, heads in [(64, 4), (96, 4), (64, 8), (96, 8), (128, 4), (128, 8), (96, 2), (64, 2), (128, 2)]:
        params = {"backbone.hidden": hidden, "backbone.heads": heads, "backbone.kv_heads": 2, "backbone.head_dim": 16,
                  "backbone.attention_sinks": True, "backbone.attention_chunk": 8,
                  "backbone.attention_chunk_layers": "global_every:2"}
        exp = with_depth(s.evaluator.experiment(params), 3)
        topo = topology_key(_architecture_key(exp))
        g = fit.combine(topo, exp)
        if g is not None:
            direct = lower(exp)
            assert graph_differences(g, direct) == [], (hidden, heads)
            strip = lambda n: {k: v for k, v in vars(n).items() if k not in ("name", "module")}  # noqa: E731
            assert [strip(n) for n in g.nodes] == [strip(n) for n in direct.nodes], (hidden, heads)
            combined += 1
        else:
            fit.add(topo, exp, cache.lower(exp))
    assert combined >= 2
