"""What a dropless MoE layer keeps on the megatron-te preset: Megatron-Core's MoE layer keeps, per
routed copy, the grouped fc1's input, the weighted SwiGLU's input (the fc1 output) and its fp32
routing probability, and fc2's input, the GEMM inputs in FP8 on an FP8 run; its un-permute keeps
only indices (compiler/stack_costs.py). vlac's own runtime keeps what its traced ops keep."""

from __future__ import annotations

import pytest

import vlac
from test_stack_memory import spec
from vlac.compiler.planner import Search

E, TOP_K, F_E, H, S = 8, 2, 128, 256, 256


def dropless_spec(stack: dict, fp8: bool) -> dict:
    out = spec(stack, layers=2, mlp="swiglu", norm="rmsnorm", positions="rope", kv_heads=2)
    out["moe"] = {"layers": "all", "experts": E, "top_k": TOP_K, "expert_hidden": F_E, "capacity_factor": None}
    out["precision"] = {"dtype": "bf16", "fp8": {"enabled": fp8, "recipe": "delayed", "keep_first_last_bf16": False}}
    return out


def experts_kept(stack: dict, fp8: bool) -> dict[str, float]:
    exp = vlac.load(dropless_spec(stack, fp8))
    graph = vlac.lower(exp)
    costs = Search(exp, exp.cluster, graph).model.p.stack_costs
    node = next(n for n in graph.nodes if n.layer == 0 and n.name.endswith("dropless_experts"))
    return costs.saved(node, S * graph.micro_batch)


@pytest.mark.parametrize("fp8, gemm_input", [(True, 1), (False, 2)])
def test_megatron_keeps_gemm_inputs_activation_input_and_probs(fp8, gemm_input):
    kept = experts_kept({"preset": "megatron-te"}, fp8)
    per_copy = (H + F_E) * gemm_input + 2 * F_E * 2 + 4  # fc1 and fc2 inputs, SwiGLU input (BF16), fp32 prob
    assert kept["none"] == pytest.approx(S * TOP_K * per_copy)
    assert kept["selective"] == kept["none"]  # Megatron's selective recompute reruns the attention core only
    assert kept["full"] == 0.0


def test_vlac_runtime_keeps_its_traced_tensors():
    # vlac's runtime keeps its padded permuted buffer, SiLU's output and the fp32 weighted copies of
    # the un-permute: more than Megatron-Core's layer
    assert experts_kept({"preset": "vlac"}, False)["none"] > 2 * experts_kept({"preset": "megatron-te"}, False)["none"]


def block_nodes(stack: dict):
    exp = vlac.load(dropless_spec(stack, True))
    graph = vlac.lower(exp)
    costs = Search(exp, exp.cluster, graph).model.p.stack_costs
    return [(n, costs.saved(n, S * graph.micro_batch)) for n in graph.nodes if n.layer == 0]


def test_megatron_router_keeps_no_fp32_copies():
    # RouterGatingLinearFunction saves the BF16 input and weight and casts inside; vlac's router
    # keeps the fp32 copies its F.linear(h.float(), w.float()) reads
    def casts(stack):
        return sum(k["none"] for n, k in block_nodes(stack)
                   if n.module.endswith(".router") and n.name.rsplit(".", 1)[-1].startswith("float"))
    assert casts({"preset": "vlac"}) >= S * H * 4
    assert casts({"preset": "megatron-te"}) == 0.0


def test_megatron_selective_recompute_keeps_the_norms():
    # recompute_modules [core_attn]: the fused norms keep under selective what they keep without
    norms = [k for n, k in block_nodes({"preset": "megatron-te"}) if n.kind == "norm"]
    assert norms and all(k["selective"] == k["none"] > 0 for k in norms)
