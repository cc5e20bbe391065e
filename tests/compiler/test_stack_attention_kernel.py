"""The attention kernel a stack runs sets the attention's time: FlashAttention's Triton kernel
(`attention: triton`, MPT's `attn_impl: triton` on llm-foundry) against FlashAttention-2, checked
against a hand count of one causal layer's attention FLOPs."""

from __future__ import annotations

import pytest

import vlac
from vlac.compiler.planner import plan
from vlac.compiler.stack_costs import ATTENTION_EFF, TRITON_FLASH_SLOWDOWN

H, A, S, L = 256, 4, 256, 2  # hidden, heads, sequence, layers
MICRO, STEPS = 2, 4  # sequences per micro-batch, micro-batches per step (per GPU)
GPUS = 8


def spec(attention: str) -> dict:
    bb = {"layers": L, "hidden": H, "heads": A, "kv_heads": A, "ffn_hidden": 4 * H, "mlp": "gelu",
          "norm": "layernorm", "positions": "learned", "context_length": S}
    return {"name": "attention-kernel", "modalities": {"text": {"kind": "text", "tokenizer": "bpe", "vocab_size": 1000,
                                                                "tokens": S - 2}},
            "backbone": bb, "fusion": {"attention_mask": "causal"},
            "data": {"mixture": [{"name": "t", "modalities": ["text"]}]},
            "train": {"seq_len": S, "global_batch_tokens": S * MICRO * STEPS * GPUS},
            "stack": {"preset": "torchtitan-torchao", "torch_compile": False, "attention": attention},
            "cluster": {"preset": "h100-sxm", "nodes": 1, "gpus_per_node": GPUS}}


@pytest.fixture(scope="module")
def graph():
    return vlac.lower(vlac.load(spec("flash2")))


def compute_seconds(graph, attention: str) -> float:
    pins = {"tp": 1, "dp": GPUS, "pp": 1, "cp": 1, "zero": 0, "microbatch_size": MICRO, "recompute": "none"}
    return plan(vlac.load(spec(attention)), graph=graph, pin=pins, advise=False).chosen.time["compute"]


def test_triton_flash_is_flash2_over_the_published_slowdown():
    # Dao 2023 (FlashAttention-2), Sec. 4.1: FlashAttention-2 1.3-2.5x faster than the Triton kernel
    assert TRITON_FLASH_SLOWDOWN == pytest.approx((1.3 * 2.5) ** 0.5)
    assert 1.3 <= TRITON_FLASH_SLOWDOWN <= 2.5
    assert ATTENTION_EFF["triton"] == pytest.approx(ATTENTION_EFF["flash2"] / TRITON_FLASH_SLOWDOWN)


def test_triton_attention_step_time_against_a_hand_count(graph):
    # one causal layer, one sequence: QK^T and PV are 2 * 2 s^2 h FLOPs forward, half of them
    # under the causal mask (the fused kernel skips it); backward 2.5x forward: 7 s^2 h in all
    per_layer_sequence = (2 + 5) * S * S * H
    attention_flops = per_layer_sequence * L * MICRO * STEPS
    peak = vlac.load(spec("flash2")).cluster.gpu.bf16_flops
    extra = attention_flops / peak * (1 / ATTENTION_EFF["triton"] - 1 / ATTENTION_EFF["flash2"])
    flash2, triton = compute_seconds(graph, "flash2"), compute_seconds(graph, "triton")
    assert triton - flash2 == pytest.approx(extra, rel=1e-6)
    assert extra > 0


def test_triton_attention_keeps_what_a_fused_kernel_keeps(graph):
    pins = {"tp": 1, "dp": GPUS, "pp": 1, "cp": 1, "zero": 0, "microbatch_size": MICRO, "recompute": "none"}
    kept = [plan(vlac.load(spec(a)), graph=graph, pin=pins, advise=False).chosen.memory["activations"]
            for a in ("flash2", "triton")]
    assert kept[0] == kept[1] > 0
