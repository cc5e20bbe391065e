"""FP8 expert GEMM inputs (stack.fp8_stored_inputs on MoE layers): TransformerEngine's
GroupedLinear keeps its quantised input for the weight gradient, so the dispatched tokens and the
expert activation's output are kept at 1 byte per element (compiler/stack_costs.py)."""

from __future__ import annotations

import math

import pytest

import vlac
from test_stack_memory import spec
from vlac.compiler.planner import Search
from vlac.compiler.stack_costs import fp8_gemm_inputs

E, TOP_K, F_E, H, S = 4, 2, 128, 256, 256


def moe_spec(stack: dict) -> dict:
    out = spec(stack, layers=2, mlp="swiglu", norm="rmsnorm", positions="rope", kv_heads=2)
    out["moe"] = {"layers": "all", "experts": E, "top_k": TOP_K, "expert_hidden": F_E, "capacity_factor": 1.0}
    out["precision"] = {"dtype": "bf16", "fp8": {"enabled": True, "recipe": "delayed", "keep_first_last_bf16": False}}
    return out


@pytest.fixture(scope="module")
def graph():
    return vlac.lower(vlac.load(moe_spec({"preset": "megatron-te"})))


def block_bytes(graph, stack: dict) -> float:
    exp = vlac.load(moe_spec(stack))
    prof = next(p for p in Search(exp, exp.cluster, graph).model.p.profiles if p.kind == "block")
    return sum(prof.saved["none"])


def test_expert_gemm_inputs_are_kept_in_fp8(graph):
    inputs = fp8_gemm_inputs(graph)
    expert_side = {n.name for n in graph.nodes if n.layer == 0 and n.name in inputs and n.kind == "elementwise"}
    assert len(expert_side) == 2  # the dispatched tokens and the expert activation's output
    # capacity 1.0: each expert holds S * top_k / E slots; the w1/w3 input is h wide per slot,
    # the w2 input F_E wide; in BF16 each byte pair becomes one FP8 byte
    slots = E * math.ceil(S * TOP_K / E)
    saved = block_bytes(graph, {"preset": "megatron-te", "fp8_stored_inputs": False}) - \
        block_bytes(graph, {"preset": "megatron-te"})
    # the attention norm's output halves (S * H bytes fewer); the attention output (heads x head_dim = h)
    # gains the projection's FP8 copy beside the fused kernel's own BF16 one (S * H more)
    attention_side = S * H - S * H
    expert_bytes = slots * (H + F_E)
    # the dispatch node also keeps its routing index (8 bytes per routed copy), counted with it
    assert expert_bytes + attention_side <= saved <= expert_bytes + attention_side + 8 * S * TOP_K
    # an FP8 run on torchao keeps the BF16 inputs (its Float8Linear saves the high-precision input)
    assert block_bytes(graph, {"preset": "torchtitan-torchao"}) > block_bytes(graph, {"preset": "megatron-te"})
