"""The lowered graph against the running model, on every example's tiny profile (CPU, fp32):
parameters exact, FLOPs within 2 % of FlopCounterMode, saved bytes within 5 % of what a forward
really keeps for backward, under each recompute policy the runtime implements. See
vlac.compiler.measure for how each side is measured and benchmarks/analysis.py for the table."""

from functools import lru_cache
from pathlib import Path

import pytest

import vlac
from vlac.compiler.graph import RECOMPUTE
from vlac.compiler.measure import (flash_minus_math, measured_flops, measured_params, measured_saved_bytes,
                                   predicted_math_flops)
from vlac.spec import read_mapping

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
MICRO_BATCH = 2
# every example under `none`, and under the checkpointing policies the ones that exercise MoE,
# late fusion and shared masks; the rest of that sweep is slow (benchmarks/analysis.py runs it all)
REPRESENTATIVE = {"tiny_vla", "flamingo", "vla_10b_moe_h100"}
CASES = [pytest.param(path, policy, id=f"{path.stem}-{policy}",
                      marks=() if policy == "none" or path.stem in REPRESENTATIVE else pytest.mark.slow)
         for path in EXAMPLES for policy in RECOMPUTE]


@lru_cache(maxsize=None)
def _tiny(path: Path):
    profiles = read_mapping(path).get("profiles") or {}
    return vlac.load(path, profile="tiny" if "tiny" in profiles else None)


@lru_cache(maxsize=None)
def _graph(path: Path):
    return vlac.lower(_tiny(path), micro_batch=MICRO_BATCH, dtype="fp32")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_parameters_are_exact(path):
    assert _graph(path).params_total == measured_params(_tiny(path))


@pytest.mark.parametrize("path,policy", CASES)
def test_flops_match_the_flop_counter(path, policy):
    predicted = predicted_math_flops(_graph(path), policy)
    measured = measured_flops(_tiny(path), MICRO_BATCH, policy=policy)
    moe = _tiny(path).moe
    if moe is not None and moe.capacity_factor is None:
        # dropless experts: group padding depends on the routing and is charged at its bound
        # (test_dropless_experts_are_charged_their_padding_bound), so an upper bound, and a close one
        assert 1.0 <= predicted / measured < 1.05
    else:
        assert predicted == pytest.approx(measured, rel=0.02)


@pytest.mark.parametrize("path,policy", CASES)
def test_saved_bytes_match_what_the_forward_keeps(path, policy):
    g = _graph(path)
    measured = measured_saved_bytes(_tiny(path), MICRO_BATCH, policy=policy)
    assert g.saved_bytes(policy) == pytest.approx(measured.live, rel=0.05)
    if policy == "none":  # nothing checkpointed: every kept tensor went through saved_tensors_hooks
        assert g.saved_bytes(policy) == pytest.approx(measured.hooks, rel=0.05)


def test_the_attention_conversion_is_what_separates_the_conventions():
    # causal: the graph counts half the dense product and a 2.5x backward; the math path counts
    # all of it with a 2x backward, so the graph is lower by 3 - 0.5 * 3.5 = 1.25 dense forwards
    g = _graph(next(p for p in EXAMPLES if p.stem == "dense_text_1b"))
    attention = [n for n in g.nodes if n.kind == "attention"]
    assert attention and all(n.causal for n in attention)
    dense_fwd = sum(2 * n.flops_fwd for n in attention)
    assert flash_minus_math(g) == pytest.approx(-1.25 * dense_fwd)


def test_dropless_experts_are_charged_their_padding_bound():
    exp = vlac.load(next(p for p in EXAMPLES if p.stem == "vla_10b_moe_h100"), ["moe.capacity_factor=null"], profile="tiny")
    g = vlac.lower(exp, micro_batch=MICRO_BATCH, dtype="fp32")
    # padding rows depend on the routing: the graph's figures are upper bounds, and close ones
    flops = predicted_math_flops(g) / measured_flops(exp, MICRO_BATCH)
    saved = g.saved_bytes("none") / measured_saved_bytes(exp, MICRO_BATCH).live
    assert 1.0 <= flops < 1.05 and 1.0 <= saved < 1.05
