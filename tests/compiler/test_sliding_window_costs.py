"""Sliding-window attention costed by its window: the (query, key) pairs in closed form, the
lowered graph's attention FLOPs against that form and against the running model's counted FLOPs
and kept bytes, and depth variants derived from a reference."""

from pathlib import Path

import pytest

import vlac
from vlac.compiler.graph_cache import GraphCache
from vlac.compiler.measure import measured_flops, measured_saved_bytes, predicted_math_flops
from vlac.compiler.node_costs import window_pairs

ROOT = Path(__file__).resolve().parents[2]
DENSE = ROOT / "examples" / "dense_text_1b.yaml"
WINDOW, MICRO_BATCH = 5, 2


def _windowed(*overrides):
    return vlac.load(DENSE, [f"backbone.sliding_window={WINDOW}", "backbone.sliding_window_layers=global_every:2",
                             *overrides], profile="tiny")


@pytest.mark.parametrize("s,w", [(32, 5), (7, 7), (4, 9), (100, 1), (33, 32)])
def test_window_pairs_are_the_closed_form_and_the_brute_count(s, w):
    closed = w * s - w * (w - 1) // 2 if s >= w else s * (s + 1) // 2
    assert window_pairs(s, s, w, causal=True) == closed == sum(min(p + 1, w) for p in range(s))
    band = sum(1 for i in range(s) for j in range(s) if abs(i - j) < w)
    assert window_pairs(s, s, w, causal=False) == band
    # decoding: the last 3 queries of s keys see min(position + 1, w) keys each
    assert window_pairs(3, s, w, causal=True) == sum(min(p + 1, w) for p in range(s - 3, s))


def test_a_windowed_layer_charges_its_windows_pairs_and_a_global_layer_half_the_square():
    exp = _windowed()
    bb, s = exp.backbone, exp.train.seq_len
    assert s > WINDOW and bb.window_layers() == (0,)
    g = vlac.lower(exp, micro_batch=MICRO_BATCH, dtype="fp32")
    local, full = (next(n for n in g.nodes if n.kind == "attention" and n.layer == i) for i in (0, 1))
    per_pair = 2 * MICRO_BATCH * bb.heads * 2 * bb.d_head  # QK^T and PV of one (query, key) pair
    assert local.flops_fwd == per_pair * (WINDOW * s - WINDOW * (WINDOW - 1) / 2)
    assert full.flops_fwd == per_pair * s * s / 2 and full.causal and not local.causal
    assert local.flops_bwd == 2.5 * local.flops_fwd
    assert local.score_fraction == (WINDOW * s - WINDOW * (WINDOW - 1) / 2) / (s * s)
    assert g.blocks.keys() == {"dense+window", "dense"}


def test_graph_costs_match_the_running_model():
    exp = _windowed()
    g = vlac.lower(exp, micro_batch=MICRO_BATCH, dtype="fp32")
    # FlopCounterMode sees the MATH backend run the whole masked square; the graph's windowed
    # count converts to it exactly through score_fraction (vlac.compiler.measure)
    assert predicted_math_flops(g) == pytest.approx(measured_flops(exp, MICRO_BATCH), rel=1e-9)
    for policy in ("none", "full"):
        assert g.saved_bytes(policy) == pytest.approx(measured_saved_bytes(exp, MICRO_BATCH, policy=policy).live,
                                                      rel=0.01)


def test_a_shorter_window_costs_less():
    s = _windowed().train.seq_len
    flops = {w: vlac.lower(_windowed(f"backbone.sliding_window={w}"), dtype="fp32").flops_fwd for w in (2, 8, s)}
    assert flops[2] < flops[8] < flops[s]


def test_depth_variants_are_derived_from_one_reference_as_lowered():
    cache = GraphCache(verify=True)  # raises when a derived graph differs from a direct lowering
    for pattern in ("global_every:2", "from:1"):
        for layers in (2, 3, 5):
            cache.lower(_windowed(f"backbone.layers={layers}", f"backbone.sliding_window_layers={pattern}"))
    assert cache.stats.derived >= 4 and not cache.stats.not_derivable
