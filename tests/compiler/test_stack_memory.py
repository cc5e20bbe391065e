"""Activation memory per decoder layer on each software stack (spec.stack), against Korthikanti
et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", Sec. 4) and
against the CPU lowering where the stack runs the same ops; the stack's overlaps in step time."""

from __future__ import annotations

import pytest

import vlac
from vlac.compiler.planner import Search, plan
from vlac.spec.errors import SpecError

H, A, S, F = 256, 4, 256, 1024  # hidden, heads, sequence, MLP width (4h, as Korthikanti's GPT)


def spec(stack: dict, **backbone) -> dict:
    bb = {"layers": 2, "hidden": H, "heads": A, "kv_heads": A, "ffn_hidden": F, "mlp": "gelu", "norm": "layernorm",
          "positions": "learned", "context_length": S, **backbone}
    return {"name": "stack-memory", "modalities": {"text": {"kind": "text", "tokenizer": "bpe", "vocab_size": 1000,
                                                            "tokens": S - 2}},
            "backbone": bb, "fusion": {"attention_mask": "causal"},
            "data": {"mixture": [{"name": "t", "modalities": ["text"]}]},
            "train": {"seq_len": S, "global_batch_tokens": S * 64}, "stack": stack,
            "cluster": {"preset": "h100-sxm", "nodes": 1, "gpus_per_node": 8}}


@pytest.fixture(scope="module")
def gpt():
    """A GPT layer as Korthikanti's (MHA, LayerNorm, GELU MLP of 4h), no dropout."""
    return vlac.lower(vlac.load(spec({})))


@pytest.fixture(scope="module")
def llama():
    return vlac.lower(vlac.load(spec({}, **LLAMA)))


LLAMA = {"kv_heads": 2, "mlp": "swiglu", "norm": "rmsnorm", "positions": "rope"}


def block(graph, stack: dict, kind: str = "block"):
    """The cost profile of the graph's first layer of `kind` under `stack`."""
    exp = vlac.load(spec(stack, **(LLAMA if any(n.module.endswith(".rotary") for n in graph.nodes) else {})))
    search = Search(exp, exp.cluster, graph)
    return next(p for p in search.model.p.profiles if p.kind == kind)


def per_token(saved) -> tuple[float, float, float]:
    """Bytes per token of a layer's (TP-sharded, SP-split, whole) parts."""
    return tuple(x / S for x in saved)


def test_megatron_te_layer_is_korthikanti_without_dropout(gpt):
    # Korthikanti eq. 2 with dropout p = 0 (drop its two sbh masks): sbh (8 + 24/t) bytes in BF16,
    # i.e. 8h per token split only by sequence parallelism, 24h split by tensor parallelism.
    # The flash kernel adds its fp32 log-sum-exp (4 bytes per head); each LayerNorm its fp32
    # mean and rstd (8 bytes per token).
    sharded, sp, whole = per_token(block(gpt, {"preset": "megatron-te"}).saved["none"])
    assert sharded == pytest.approx(24 * H + 4 * A)
    assert sp == pytest.approx(8 * H + 2 * 8)
    assert whole == 0
    # with SP at t = 4 the layer keeps (32 sbh + small terms) / t: no s^2 term with flash attention
    t = 4
    assert (sharded + sp) / t == pytest.approx((32 * H + 4 * A + 16) / t)


@pytest.mark.parametrize("attention", ["cudnn", "unfused"])
def test_full_recompute_keeps_the_layer_input_as_korthikanti(gpt, attention):
    # Korthikanti et al. 2022, Sec. 5: full activation recomputation stores only each layer's
    # input, 2sbh bytes in BF16, which sequence parallelism splits over the t ranks; nothing of
    # attention's s x s scores stays, fused kernel or not
    sharded, sp, whole = per_token(block(gpt, {"preset": "megatron-te", "attention": attention}).saved["full"])
    assert (sharded, sp, whole) == (0, pytest.approx(2 * H), 0)


def test_unfused_attention_adds_the_score_term_and_selective_removes_it(gpt):
    flash = block(gpt, {"preset": "megatron-te"})
    unfused = block(gpt, {"preset": "megatron-te", "attention": "unfused"})
    # 2as^2b: the softmax probabilities (the PV input) in BF16, per sequence of s tokens: 2as per token,
    # split over TP ranks with the heads
    extra = per_token(unfused.saved["none"])[0] - per_token(flash.saved["none"])[0]
    assert extra == pytest.approx(2 * A * S)
    assert unfused.saved["selective"] == pytest.approx(flash.saved["selective"])
    assert unfused.saved["full"] == pytest.approx(flash.saved["full"])
    # the unfused kernel moves the score matrix through memory; a fused one does not
    assert unfused.attn_score_bytes > 0 == flash.attn_score_bytes


def test_megatron_selective_recomputes_only_the_attention_core(gpt):
    # Korthikanti et al. 2022, Sec. 4.2: selective recompute takes a layer from sbh(34 + 5as/h)
    # to 34sbh, i.e. 32sbh without the two dropout masks, 24sbh of it split by TP (the LN
    # statistics stay: 2 x 8 bytes per token). Megatron-Core recomputes the core attention only,
    # so everything but the kernel's own state stays: the fp32 log-sum-exp goes with flash, the
    # 2as^2b probabilities with an unfused kernel
    for attention in ("cudnn", "unfused"):
        b = block(gpt, {"preset": "megatron-te", "attention": attention})
        sharded, sp, whole = per_token(b.saved["selective"])
        assert (sharded, sp, whole) == (pytest.approx(24 * H), pytest.approx(8 * H + 2 * 8), 0), attention
    flash = block(gpt, {"preset": "megatron-te"})
    unfused = block(gpt, {"preset": "megatron-te", "attention": "unfused"})
    assert per_token(flash.saved["none"])[0] - per_token(flash.saved["selective"])[0] == pytest.approx(4 * A)
    assert per_token(unfused.saved["none"])[0] - per_token(unfused.saved["selective"])[0] == pytest.approx(2 * A * S + 4 * A)


def test_elementwise_selective_keeps_gemm_and_attention_outputs(gpt):
    # vlac's selective (the runtime's, and the stack override's): of Korthikanti's 24sbh split by
    # TP it keeps Q, K (4), V (2), the attention output (2) and the GELU input (8), recomputing
    # the GELU output (8); of the rest the layer input and the two row-parallel GEMM outputs (2
    # each), recomputing the norms and residual adds; plus the flash log-sum-exp
    for stack in ({"preset": "vlac"}, {"preset": "megatron-te", "selective_recompute": "elementwise"}):
        sharded, sp, whole = per_token(block(gpt, stack).saved["selective"])
        assert (sharded, sp, whole) == (pytest.approx(16 * H + 4 * A), pytest.approx(6 * H), 0), stack


def fp8_spec(stack: dict) -> dict:
    return {**spec(stack), "precision": {"fp8": {"enabled": True, "keep_first_last_bf16": False}}}


@pytest.fixture(scope="module")
def gpt_fp8():
    return vlac.lower(vlac.load(fp8_spec({})))


def fp8_block(graph, stack: dict):
    exp = vlac.load(fp8_spec(stack))
    return next(p for p in Search(exp, exp.cluster, graph).model.p.profiles if p.kind == "block")


def test_transformer_engine_keeps_fp8_gemm_inputs_in_fp8(gpt_fp8):
    # TE's Linear/LayerNormLinear/LayerNormMLP keep the FP8 copy of their input for the weight
    # gradient: of Korthikanti's 32sbh the GEMM inputs (QKV 2 and the MLP input 2, both norm
    # outputs split by SP only; the projection input 2 and the fc2 input 8, TP-split) halve, and
    # the fused attention kernel keeps its own BF16 output (2) beside the projection's FP8 copy, so
    # a layer keeps 27sbh: 21h TP-split (+ the flash log-sum-exp), 6h by SP only (+ LN statistics)
    sharded, sp, whole = per_token(fp8_block(gpt_fp8, {"preset": "megatron-te"}).saved["none"])
    assert (sharded, sp, whole) == (pytest.approx(21 * H + 4 * A), pytest.approx(6 * H + 2 * 8), 0)
    # selective on megatron-te reruns the kernel: no log-sum-exp, no BF16 output, the FP8 copy kept
    assert per_token(fp8_block(gpt_fp8, {"preset": "megatron-te"}).saved["selective"])[0] == pytest.approx(19 * H)
    # torchao keeps the high-precision inputs: Korthikanti's BF16 figures
    sharded, sp, _ = per_token(fp8_block(gpt_fp8, {"preset": "megatron-te", "fp8_stored_inputs": False}).saved["none"])
    assert (sharded, sp) == (pytest.approx(24 * H + 4 * A), pytest.approx(8 * H + 2 * 8))
    torchao = fp8_block(gpt_fp8, {"preset": "torchtitan-torchao"}).saved["none"]
    assert per_token(torchao)[0] == pytest.approx(24 * H + 4 * A)


def test_fp8_inputs_need_fp8_gemms(gpt):
    # a BF16 run keeps BF16 inputs whatever the stack says
    sharded, sp, _ = per_token(block(gpt, {"preset": "megatron-te"}).saved["none"])
    assert (sharded, sp) == (pytest.approx(24 * H + 4 * A), pytest.approx(8 * H + 2 * 8))


def rerun(graph, stack: dict) -> tuple:
    """Per block: the seconds selective recompute reruns, attention forward, memory-bound forward."""
    exp = vlac.load(spec(stack))
    model = Search(exp, exp.cluster, graph).model
    t = model.p.times([2], [True], [1], [1], [1], [1])
    j = next(i for i, p in enumerate(model.p.profiles) if p.kind == "block")
    return t["selective_rerun"][0, j], t["attn_fwd"][0, j], t["mem_fwd"][0, j]


def test_selective_recompute_time_follows_the_stack(gpt):
    core, attn, mem = rerun(gpt, {"preset": "megatron-te"})
    assert core == attn > 0 and attn != mem
    elementwise, attn, mem = rerun(gpt, {"preset": "megatron-te", "selective_recompute": "elementwise"})
    assert elementwise == mem > 0
    pins = {"tp": 2, "dp": 4, "pp": 1, "cp": 1, "zero": 1, "microbatch_size": 1, "recompute": "selective"}
    te = plan_time(gpt, {"preset": "megatron-te"}, pins)
    ew = plan_time(gpt, {"preset": "megatron-te", "selective_recompute": "elementwise"}, pins)
    assert te.time["recompute"] > 0 and ew.time["recompute"] > 0 and te.time["recompute"] != ew.time["recompute"]
    # Megatron's selective keeps nearly what no recompute keeps; vlac's keeps less
    assert te.memory["activations"] > ew.memory["activations"]


def test_vlac_stack_without_fusions_is_the_cpu_lowering(llama):
    # the lowering runs the runtime's reference ops: a stack with nothing fused keeps exactly
    # what the graph's nodes save, policy by policy
    b = block(llama, {"preset": "vlac", "fused": []})
    for pol in ("none", "selective", "full"):
        raw = sum(n.saved[pol] for n in llama.nodes if n.layer == 0)
        assert sum(b.saved[pol]) == pytest.approx(raw), pol


def test_vlac_default_fuses_norm_and_rope_as_its_triton_kernels(llama):
    raw = sum(block(llama, {"preset": "vlac", "fused": []}).saved["none"]) / S
    fused = sum(block(llama, {"preset": "vlac"}).saved["none"]) / S
    head_dim = H // A
    norms = [n.saved["none"] / S for n in llama.nodes if n.layer == 0 and n.kind == "norm"]
    assert len(norms) == 2 and all(x > 8 * H for x in norms)  # the eager norm's fp32 copies
    # a fused RMSNorm keeps its BF16 input and output and an fp32 rstd per token; a fused RoPE
    # does not keep the fp32 cos and sin rows of each call (q and k)
    assert raw - fused == pytest.approx(sum(x - (4 * H + 4) for x in norms) + 2 * 2 * head_dim * 4)


def test_megatron_te_swiglu_and_loss_fusions(llama):
    vlac_b = block(llama, {"preset": "vlac"})
    te = block(llama, {"preset": "megatron-te"})
    # a fused SwiGLU does not keep SiLU's output (F wide, BF16)
    assert (sum(vlac_b.saved["none"]) - sum(te.saved["none"])) / S == pytest.approx(2 * F)
    # Megatron's cross entropy (fused or not) keeps its fp32 softmax, as many bytes as the eager
    # fp32 log-softmax (megatron/core/tensor_parallel/cross_entropy.py); a fused cross entropy
    # elsewhere (flash_attn's) keeps the logits in BF16 instead: half
    eager = sum(block(llama, {"preset": "vlac"}, "head").saved["none"])
    megatron = sum(block(llama, {"preset": "megatron-te"}, "head").saved["none"])
    flash = sum(block(llama, {"preset": "vlac", "fused": ["norm", "rope", "cross_entropy"]}, "head").saved["none"])
    ce = sum(n.saved["none"] for n in llama.nodes if n.kind == "loss" and n.name.startswith("cross_entropy"))
    assert ce > 0 and eager - flash == pytest.approx(ce / 2)
    norm_gain = eager - sum(block(llama, {"preset": "vlac", "fused": ["norm", "rope"]}, "head").saved["none"])
    assert eager - megatron == pytest.approx(norm_gain)  # the fused final norm alone


def test_eager_elementwise_kernels_move_more_than_fused_ones(gpt):
    # fused_elementwise false: each residual add moves its hidden-wide BF16 tensor 6 times (3
    # forward, 3 for autograd's sum of the two gradients at the fork), each eager LayerNorm 3
    # passes beyond the 4 over what it keeps (its weight-gradient kernel reads dy and x again,
    # the dx kernel writes one more), the GELU 1 pass beyond the 4 over its kept input (2F bytes)
    fused = block(gpt, {"preset": "megatron-te"})
    eager = block(gpt, {"preset": "megatron-te", "fused_elementwise": False})
    per_layer = 2 * 6 * 2 * H + 2 * 3 * 2 * H + 1 * 2 * F
    assert (sum(eager.mem) - sum(fused.mem)) / S == pytest.approx(per_layer)
    assert eager.saved == fused.saved  # traffic, not memory
    # torch.compile generates fused element-wise kernels whatever fused_elementwise says
    compiled = block(gpt, {"preset": "megatron-te", "fused_elementwise": False, "torch_compile": True})
    assert compiled.mem == pytest.approx(fused.mem)
    # vlac's emitted program runs them eagerly: its preset is the eager one
    assert sum(block(gpt, {"preset": "vlac"}).mem) > sum(block(gpt, {"preset": "vlac", "fused_elementwise": True}).mem)


def plan_time(graph, stack: dict, pins: dict):
    exp = vlac.load(spec(stack))
    return plan(exp, graph=graph, pin=pins, advise=False).chosen


def test_overlaps_are_the_stacks(gpt):
    pins = {"tp": 2, "dp": 4, "pp": 1, "cp": 1, "zero": 1, "microbatch_size": 1, "recompute": "none"}
    on = plan_time(gpt, {"preset": "megatron-te"}, pins)
    no_tp = plan_time(gpt, {"preset": "megatron-te", "tp_comm_overlap": False}, pins)
    no_dp = plan_time(gpt, {"preset": "megatron-te", "grad_reduce_overlap": False, "param_gather_overlap": False}, pins)
    assert no_tp.time["tp_comm"] > 2 * on.time["tp_comm"] > 0
    assert no_dp.time["dp_comm"] > on.time["dp_comm"]
    assert no_tp.step_time_s > on.step_time_s and no_dp.step_time_s > on.step_time_s
    # FlashAttention-2 is slower than cuDNN/FA3 on the same FLOPs
    fa2 = plan_time(gpt, {"preset": "megatron-te", "attention": "flash2"}, pins)
    assert fa2.step_time_s > on.step_time_s


@pytest.mark.parametrize("stack, field, choice", [
    ({"preset": "megatron"}, "stack.preset", "megatron-te"),
    ({"attention": "flash4"}, "stack.attention", "flash3"),
    ({"fused": ["layernorm"]}, "stack.fused[0]", "cross_entropy"),
    ({"selective_recompute": "attention"}, "stack.selective_recompute", "core_attention"),
])
def test_bad_stack_names_the_field_and_choices(stack, field, choice):
    with pytest.raises(SpecError) as e:
        vlac.load(spec(stack))
    assert field in str(e.value) and choice in str(e.value)
