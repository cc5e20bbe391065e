"""Chunked attention and attention sinks costed by the pairs a kernel computes: the chunk's pairs in
closed form against a brute count, the lowered graph's attention FLOPs against that count (plus one
pair per query for the sink), the running model's counted FLOPs and kept bytes, and depth variants
derived from a reference."""

from pathlib import Path

import pytest

import vlac
from vlac.compiler.attention_pairs import chunk_pairs
from vlac.compiler.graph_cache import GraphCache
from vlac.compiler.measure import measured_flops, measured_saved_bytes, predicted_math_flops

ROOT = Path(__file__).resolve().parents[2]
DENSE = ROOT / "examples" / "dense_text_1b.yaml"
CHUNK, MICRO_BATCH = 5, 2


def _variant(*overrides):
    return vlac.load(DENSE, list(overrides), profile="tiny")


def _chunked(*overrides):
    return _variant(f"backbone.attention_chunk={CHUNK}", "backbone.attention_chunk_layers=global_every:2", *overrides)


@pytest.mark.parametrize("sq,sk,c", [(32, 32, 5), (7, 7, 7), (4, 4, 9), (3, 17, 4), (1, 9, 3), (12, 12, 1)])
def test_chunk_pairs_are_the_brute_count(sq, sk, c):
    q_pos = range(sk - sq, sk)
    assert chunk_pairs(sq, sk, c, causal=True) == sum(1 for i in q_pos for j in range(sk) if j <= i and i // c == j // c)
    assert chunk_pairs(sq, sk, c, causal=False) == sum(1 for i in q_pos for j in range(sk) if i // c == j // c)


def _attention(g, layer):
    return next(n for n in g.nodes if n.kind == "attention" and n.layer == layer)


def test_a_chunked_layer_charges_its_chunks_pairs_and_a_global_layer_half_the_square():
    exp = _chunked()
    bb, s = exp.backbone, exp.train.seq_len
    assert s % CHUNK and bb.chunk_layers() == (0,)  # a last, shorter chunk
    g = vlac.lower(exp, micro_batch=MICRO_BATCH, dtype="fp32")
    per_pair = 2 * MICRO_BATCH * bb.heads * 2 * bb.d_head  # QK^T and PV of one (query, key) pair
    pairs = (s // CHUNK) * CHUNK * (CHUNK + 1) // 2 + (s % CHUNK) * (s % CHUNK + 1) // 2
    local, full = _attention(g, 0), _attention(g, 1)
    assert local.flops_fwd == per_pair * pairs and local.score_fraction == pairs / (s * s) and not local.causal
    assert full.flops_fwd == per_pair * s * s / 2 and full.causal
    assert local.flops_bwd == 2.5 * local.flops_fwd
    assert g.blocks.keys() == {"dense+chunk", "dense"}


@pytest.mark.parametrize("pattern", [None, "chunk", "window"])
def test_sinks_add_one_pair_per_query_to_the_layers_own(pattern):
    extra = {None: [], "chunk": [f"backbone.attention_chunk={CHUNK}"], "window": ["backbone.sliding_window=3"]}[pattern]
    plain = vlac.lower(_variant(*extra), micro_batch=MICRO_BATCH, dtype="fp32")
    exp = _variant("backbone.attention_sinks=true", *extra)
    sinks = vlac.lower(exp, micro_batch=MICRO_BATCH, dtype="fp32")
    bb, s = exp.backbone, exp.train.seq_len
    per_pair = 2 * MICRO_BATCH * bb.heads * 2 * bb.d_head
    for layer in range(bb.layers):
        before, after = _attention(plain, layer), _attention(sinks, layer)
        assert after.flops_fwd == before.flops_fwd + per_pair * s
        assert after.score_fraction * s * (s + 1) == pytest.approx(before.score_fraction * s * s + s, rel=1e-12)
    # one logit per head and layer, split with the heads over tensor parallelism
    for tp in (1, 2):
        assert sinks.params_per_rank(tp) == plain.params_per_rank(tp) + bb.layers * bb.heads / tp


@pytest.mark.parametrize("overrides", [[f"backbone.attention_chunk={CHUNK}"], ["backbone.attention_sinks=true"],
                                       ["backbone.attention_sinks=true", f"backbone.attention_chunk={CHUNK}"]])
def test_graph_costs_match_the_running_model(overrides):
    exp = _variant(*overrides)
    g = vlac.lower(exp, micro_batch=MICRO_BATCH, dtype="fp32")
    # FlopCounterMode sees the MATH backend run the whole masked square (and the sink's column);
    # the graph's pair count converts to it exactly through score_fraction (vlac.compiler.measure).
    # The runtime carries each sink's logit in one more q/k dimension and pads v alike, which the
    # graph does not charge (a sink-aware kernel has neither): 2 x 2 more FLOPs per score forward
    # (QK^T, PV), twice that in the math backend's backward
    bb, s = exp.backbone, exp.train.seq_len
    padding = 3 * 2 * 2 * MICRO_BATCH * bb.heads * s * (s + 1) * bb.layers if bb.attention_sinks else 0
    assert predicted_math_flops(g) + padding == pytest.approx(measured_flops(exp, MICRO_BATCH), rel=1e-9)
    for policy in ("none", "full"):
        assert g.saved_bytes(policy) == pytest.approx(measured_saved_bytes(exp, MICRO_BATCH, policy=policy).live,
                                                      rel=0.01)


def test_depth_variants_are_derived_from_one_reference_as_lowered():
    cache = GraphCache(verify=True)  # raises when a derived graph differs from a direct lowering
    for pattern in ("global_every:2", "from:1"):
        for layers in (2, 3, 5):
            cache.lower(_chunked(f"backbone.layers={layers}", f"backbone.attention_chunk_layers={pattern}",
                                 "backbone.attention_sinks=true"))
    assert cache.stats.derived >= 4 and not cache.stats.not_derivable
