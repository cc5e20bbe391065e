"""The vocabulary's costs on each stack (compiler/stack_costs.py): Megatron's fp32 cross entropy
(bytes per logit counted from megatron/core/tensor_parallel/cross_entropy.py and
fusions/fused_cross_entropy.py) and the embedding table's dense weight gradient once per
micro-batch (PyTorch's embedding backward, then its accumulation into the step's gradient)."""

from __future__ import annotations

import numpy as np
import pytest

import vlac
from vlac.compiler.hardware import Hardware
from vlac.compiler.planner import Search
from vlac.compiler.profile import MEMBOUND_PASSES

H, S, V = 256, 256, 1000  # hidden, sequence, vocabulary (the graph pads it to a multiple of 128)


def spec(stack: dict, **backbone) -> dict:
    return {"name": "vocab-costs", "modalities": {"text": {"kind": "text", "tokenizer": "bpe", "vocab_size": V,
                                                           "tokens": S - 2}},
            "backbone": {"layers": 2, "hidden": H, "heads": 4, "kv_heads": 4, "ffn_hidden": 4 * H,
                         "context_length": S, **backbone},
            "fusion": {"attention_mask": "causal"}, "data": {"mixture": [{"name": "t", "modalities": ["text"]}]},
            "train": {"seq_len": S, "global_batch_tokens": S * 64}, "stack": stack,
            "cluster": {"preset": "h100-sxm", "nodes": 1, "gpus_per_node": 8}}


@pytest.fixture(scope="module")
def graph():
    return vlac.lower(vlac.load(spec({})))


def profile(graph, stack: dict, **backbone):
    exp = vlac.load(spec(stack, **backbone))
    return Search(exp, exp.cluster, graph).model.p


def layer(prof, kind: str):
    return next(p for p in prof.profiles if p.kind == kind)


def loss_node(graph):
    return next(n for n in graph.nodes if n.kind == "loss" and n.name.startswith("cross_entropy"))


def test_megatron_cross_entropy_keeps_and_moves_fp32(graph):
    n = loss_node(graph)
    logits = n.saved["none"] / 4  # the eager graph keeps an fp32 log-softmax
    assert logits == pytest.approx(graph.micro_batch * S * 1024, rel=1e-4)  # the vocabulary padded to 128s (and the loss)
    fused = profile(graph, {"preset": "megatron-te"}).stack_costs
    unfused = profile(graph, {"preset": "megatron-te", "fused": ["norm", "swiglu", "rope"]}).stack_costs
    # Megatron keeps its fp32 softmax for backward, fused or not
    assert fused.saved(n, S)["none"] == unfused.saved(n, S)["none"] == n.saved["none"]
    # 36 bytes a logit fused, 52 unfused, of which the 4 passes over the kept 4 bytes are charged anyway
    assert fused.fused_traffic(n, S, MEMBOUND_PASSES) == pytest.approx((36 - 16) * logits)
    assert unfused.fused_traffic(n, S, MEMBOUND_PASSES) == pytest.approx((52 - 16) * logits)
    # and the head's traffic differs by exactly that between the two
    diff = sum(layer(profile(graph, {"preset": "megatron-te", "fused": ["norm", "swiglu", "rope"]}), "head").mem) - \
        sum(layer(profile(graph, {"preset": "megatron-te"}), "head").mem)
    assert diff * graph.micro_batch == pytest.approx(16 * logits)


def test_other_stacks_charge_no_megatron_loss(graph):
    n = loss_node(graph)
    for stack in ({"preset": "vlac"}, {"preset": "torchtitan-torchao", "fused": ["cross_entropy"]}):
        costs = profile(graph, stack).stack_costs
        assert costs.fused_traffic(n, S, MEMBOUND_PASSES) == 0.0
    # flash_attn's fused loss keeps 2 bytes a logit (the activation dtype), the eager one its fp32 4
    flash = profile(graph, {"preset": "torchtitan-torchao", "fused": ["cross_entropy"]}).stack_costs
    assert flash.saved(n, S)["none"] == pytest.approx(n.saved["none"] / 2)


@pytest.mark.parametrize("stack, per_element", [("megatron-te", 12.0), ("vlac", 8.0), ("torchtitan-torchao", 8.0)])
def test_embedding_gradient_is_dense_once_per_micro_batch(graph, stack, per_element):
    prof = profile(graph, {"preset": stack})
    table = next(n for n in graph.nodes if n.kind == "embedding")
    assert layer(prof, "embed").grad_dense_bytes == pytest.approx(table.params_embedding * per_element)
    hw = Hardware(vlac.load(spec({})).cluster)

    def seconds(tp, mb):
        one = np.array([1])
        t = prof.times(np.array([tp]), np.array([tp > 1]), one, np.array([mb]), one, one)
        return t["mem_bwd"][0, prof.sequence[0]]

    expected = hw.memory_seconds(table.params_embedding * per_element)
    # the same for one sequence or eight (a micro-batch's cost, not a token's), the vocabulary split over TP
    assert seconds(1, 1) == pytest.approx(expected) and seconds(1, 8) == pytest.approx(expected)
    assert seconds(4, 1) == pytest.approx(expected / 4)


def test_a_frozen_embedding_has_no_gradient():
    frozen = vlac.lower(vlac.load(spec({}, freeze=True)))
    prof = profile(frozen, {"preset": "megatron-te"}, freeze=True)
    assert layer(prof, "embed").grad_dense_bytes == 0.0
