"""Full recompute of part of a pipeline rank's blocks (stack.partial_recompute, Megatron-Core's
--recompute-method block --recompute-num-layers k; vlac.compiler.recompute_choice): memory and
recompute time against Korthikanti et al. 2022's per-layer figures, and the planner's choice of
the smallest k that fits."""

from __future__ import annotations

import numpy as np
import pytest

import vlac
from test_cost_model import one_row
from test_stack_memory import A, H, S, spec
from vlac.compiler.hardware import Hardware
from vlac.compiler.planner import Search, _layout

LAYERS = 4
FULL = np.array([[2]])


def search_for(stack: dict) -> Search:
    exp = vlac.load(spec(stack, layers=LAYERS))
    return Search(exp, exp.cluster, vlac.lower(exp))


@pytest.fixture(scope="module")
def megatron():
    return search_for({"preset": "megatron-te"})


def with_k(search: Search, k: int, **row):
    """One layout (tp1, pp1, one micro-batch unless `row` says) with full recompute on k blocks."""
    return search.model.evaluate(one_row(dp=8, **row), forced=np.full((1, row.get("pp", 1)), 2),
                                 forced_layers=np.full((1, row.get("pp", 1)), k), time_all=True, detail=True)


def test_k_recomputed_layers_keep_only_their_input(megatron):
    # Korthikanti eq. 2 without dropout: a GPT layer keeps sbh(8 + 24/t) bytes in BF16 (32 sbh at
    # t = 1), plus the flash kernel's fp32 log-sum-exp (4 bytes per head and token) and the two
    # LayerNorms' fp32 mean and rstd (16 bytes per token); a layer under full recompute keeps
    # its input, 2sbh (Sec. 5). Each recomputed layer therefore frees the difference.
    kept, recomputed = S * (32 * H + 4 * A + 16), S * 2 * H
    acts = [with_k(megatron, k).memory["activations"][0] for k in range(LAYERS + 1)]
    for k, a in enumerate(acts):
        assert a == pytest.approx(acts[0] - k * (kept - recomputed), rel=1e-12)
    # k = 0 is no recompute and k = every layer is full recompute, exactly
    none = megatron.model.evaluate(one_row(dp=8), forced=np.array([[0]]), time_all=True, detail=True)
    full = megatron.model.evaluate(one_row(dp=8), forced=FULL, time_all=True, detail=True)
    assert acts[0] == pytest.approx(none.memory["activations"][0], rel=1e-12)
    assert acts[-1] == full.memory["activations"][0]


def test_k_recomputed_layers_run_their_forward_again(megatron):
    # the extra time is k layer forwards: the block's forward GEMMs, attention and memory-bound
    # work (tp = cp = 1: no communication to repeat)
    model = megatron.model
    one = np.array([1])
    lt = model.p.times(one, np.array([False]), one, one, one, one)
    layer_fwd = lt["gemm_fwd"][0] + lt["attn_fwd"][0] + lt["mem_fwd"][0]
    _, counts = model.composition(1, 1)
    blocks = counts[0] * model.is_block
    per_layer = float(layer_fwd @ blocks) / blocks.sum()
    assert blocks.sum() == LAYERS
    for k in range(LAYERS + 1):
        assert with_k(megatron, k).time["recompute"][0] == pytest.approx(k * per_layer, rel=1e-12)


def test_memory_falls_and_step_time_grows_with_k(megatron):
    evs = [with_k(megatron, k, mb=2, m=4) for k in range(LAYERS + 1)]
    peaks = [ev.peak[0] for ev in evs]
    steps = [ev.step[0] for ev in evs]
    assert all(a > b for a, b in zip(peaks, peaks[1:]))
    assert all(a < b for a, b in zip(steps, steps[1:]))


def cap_at(monkeypatch, cap: float) -> None:
    monkeypatch.setattr(Hardware, "usable_memory", property(lambda self: cap))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_planner_recomputes_the_fewest_layers_that_fit(megatron, monkeypatch, k):
    # a cap just above the peak with k layers recomputed: k - 1 do not fit, k do
    peaks = [with_k(megatron, j).peak[0] for j in range(LAYERS + 1)]
    cap_at(monkeypatch, (peaks[k] + peaks[k - 1]) / 2)
    ev = megatron.model.evaluate(one_row(dp=8), allowed=(0, 1, 2))
    assert ev.fits[0] and ev.policy[0, 0] == 2 and ev.layers[0, 0] == k
    assert ev.peak[0] == pytest.approx(peaks[k], rel=1e-12)
    # the plan says so: full on k of the stage's LAYERS blocks
    lay = _layout(megatron, ev, 0)
    assert lay.recompute == "full" and lay.stage_recompute_layers == (k,)
    assert f"full({k} layers)" in lay.short()


def test_without_partial_recompute_a_stage_recomputes_every_layer(monkeypatch):
    # torchtitan's full activation checkpointing wraps every block: the same cap costs all four layers
    titan = search_for({"preset": "torchtitan-torchao"})
    assert not titan.model.p.stack.partial_recompute
    peaks = [with_k(titan, j).peak[0] for j in range(LAYERS + 1)]
    cap_at(monkeypatch, (peaks[1] + peaks[2]) / 2)
    ev = titan.model.evaluate(one_row(dp=8), allowed=(0, 2))
    assert ev.fits[0] and ev.layers[0, 0] == LAYERS
    assert _layout(titan, ev, 0).stage_recompute_layers == ()
    # the override turns it on for any preset; vlac's runtime checkpoints the planned layers
    assert search_for({"preset": "torchtitan-torchao", "partial_recompute": True}).model.p.stack.partial_recompute
    assert search_for({"preset": "vlac"}).model.p.stack.partial_recompute


def test_pinned_full_recompute_with_memory_to_spare_covers_every_block(megatron):
    # the smallest k that fits is 0 here: `full` on no block would be no recompute at all
    ev = megatron.model.evaluate(one_row(dp=8), allowed=(2,))
    assert ev.fits[0] and ev.policy[0, 0] == 2 and ev.layers[0, 0] == LAYERS


def test_pipeline_ranks_holding_more_micro_batches_recompute_more(megatron, monkeypatch):
    # 1F1B: the first of two ranks holds two micro-batches' activations, the last one; under a cap
    # between them the first rank recomputes more of its layers than the last
    cap = with_k(megatron, 1, pp=2, m=4).rank_memory[0, 0].sum()
    cap_at(monkeypatch, cap)
    ev = megatron.model.evaluate(one_row(dp=4, pp=2, m=4), allowed=(0, 2))
    assert ev.fits[0]
    first, last = ev.layers[0, :2]
    assert first > last
    lay = _layout(megatron, ev, 0)
    assert lay.stage_recompute_layers == (int(first), int(last))


def test_a_partial_plan_is_run_as_timed_by_vlacs_runtime(megatron, monkeypatch):
    # the emitted program checkpoints the plan's k blocks per rank (runtime/parallel/
    # activation_checkpoint.py): no runtime note, under megatron-te as under vlac's own stack
    for search in (megatron, search_for({"preset": "vlac"})):
        peaks = [with_k(search, j).peak[0] for j in range(LAYERS + 1)]
        cap_at(monkeypatch, (peaks[1] + peaks[2]) / 2)
        p = vlac.plan(search.exp, graph=search.g, pin={"dp": 8, "tp": 1, "pp": 1, "cp": 1, "microbatch_size": 1,
                                                       "recompute": "full", "zero": 0})
        assert p.chosen.layout.stage_recompute_layers == (2,)
        out = p.to_json()
        assert out["plan"]["recompute_layers_per_stage"] == [2]
        assert not any("recompute" in why for why in out["runtime"]["not_as_timed"])
