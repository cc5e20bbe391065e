"""A fused SwiGLU's HBM traffic (compiler/stack_costs.py): Megatron's bias_swiglu_impl and
torch.compile's kernels read the [2f] input and write the f-wide output forward, read the output
gradient and the input and write the input gradient backward: 8 f-wide tensors per token, not 4
passes over the output it keeps."""

from __future__ import annotations

import pytest

import vlac
from vlac.compiler.planner import Search
from vlac.compiler.profile import MEMBOUND_PASSES

H, S, F = 256, 256, 704


def spec(stack: dict, fp8: bool = False) -> dict:
    return {"name": "swiglu-traffic", "modalities": {"text": {"kind": "text", "tokenizer": "bpe", "vocab_size": 1000,
                                                              "tokens": S - 2}},
            "backbone": {"layers": 2, "hidden": H, "heads": 4, "kv_heads": 2, "ffn_hidden": F, "mlp": "swiglu",
                         "context_length": S},
            "fusion": {"attention_mask": "causal"}, "data": {"mixture": [{"name": "t", "modalities": ["text"]}]},
            "train": {"seq_len": S, "global_batch_tokens": S * 64}, "stack": stack,
            "precision": {"dtype": "bf16", "fp8": {"enabled": fp8, "keep_first_last_bf16": False}},
            "cluster": {"preset": "h100-sxm", "nodes": 1, "gpus_per_node": 8}}


@pytest.fixture(scope="module")
def graph():
    return vlac.lower(vlac.load(spec({})))


def costs(graph, stack: dict, fp8: bool = False):
    exp = vlac.load(spec(stack, fp8))
    return Search(exp, exp.cluster, graph).model.p.stack_costs


def product(graph):
    return next(n for n in graph.nodes if n.layer == 0 and n.module.endswith(".mlp") and n.name.endswith(".mul"))


@pytest.mark.parametrize("stack, fp8, kept_bytes", [({"preset": "megatron-te"}, False, 2),
                                                    ({"preset": "megatron-te"}, True, 1),
                                                    ({"preset": "torchtitan-torchao"}, False, 2)])
def test_fused_swiglu_moves_eight_f_wide_tensors(graph, stack, fp8, kept_bytes):
    n = product(graph)
    tokens = S * graph.micro_batch
    assert n.saved["none"] == pytest.approx(F * 2 * tokens)  # the eager product keeps its BF16 output
    c = costs(graph, stack, fp8)
    assert c.saved(n, tokens)["none"] == pytest.approx(F * kept_bytes * tokens)
    # 8 f-wide BF16 tensors in all, of which 4 passes over what it keeps are charged anyway
    assert c.fused_traffic(n, tokens, MEMBOUND_PASSES) + MEMBOUND_PASSES * c.saved(n, tokens)["none"] == \
        pytest.approx(8 * F * 2 * tokens)


def test_eager_swiglu_keeps_the_four_passes(graph):
    n = product(graph)
    assert costs(graph, {"preset": "vlac"}).fused_traffic(n, S * graph.micro_batch, MEMBOUND_PASSES) == 0.0
