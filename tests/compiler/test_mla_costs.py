"""Multi-head latent attention costed exactly: DeepSeek-V3's published attention shapes, the
lowered graph's parameters and FLOPs against the closed forms (compiler/latent_attention_formulas.py)
and against the running model's counted FLOPs, the fused kernel's kept bytes with value heads of
their own width, and what tensor / sequence parallelism divides (the down path is replicated)."""

from pathlib import Path

import pytest
import torch

import vlac
from vlac.compiler.latent_attention_formulas import LatentAttentionShape
from vlac.compiler.measure import measured_flops, predicted_math_flops
from vlac.runtime.mla import LatentAttention

ROOT = Path(__file__).resolve().parents[2]
DENSE = ROOT / "examples" / "dense_text_1b.yaml"
MLA = "backbone.mla={q_lora_rank: 48, kv_lora_rank: 32, qk_rope_head_dim: 16, qk_nope_head_dim: 16, v_head_dim: 24}"
DIRECT_Q = "backbone.mla={q_lora_rank: null, kv_lora_rank: 32, qk_rope_head_dim: 16, qk_nope_head_dim: 32, v_head_dim: 16}"
MICRO_BATCH = 2


def _exp(*overrides):
    return vlac.load(DENSE, ["backbone.kv_heads=null", *overrides], profile="tiny")


def test_deepseek_v3_attention_block_has_the_published_shapes():
    """DeepSeek-V3's config.json (hidden 7168, 128 heads, q_lora_rank 1536, kv_lora_rank 512,
    qk_nope 128, qk_rope 64, v 128): the weights of its q_a/q_b/kv_a/kv_b/o projections and the
    two latent norms, 187,107,328 parameters per attention block."""
    bb = vlac.load(DENSE, ["backbone.kv_heads=null", "backbone.hidden=7168", "backbone.heads=128",
                           "backbone.mla={}"]).backbone
    with torch.device("meta"):
        attn = LatentAttention(bb)
    shapes = {n: p.numel() for n, p in attn.named_parameters()}
    published = {"latent.wq_down.weight": 7168 * 1536, "latent.q_norm.weight": 1536,
                 "latent.wkv_down.weight": 7168 * (512 + 64), "latent.kv_norm.weight": 512,
                 "wq_up.weight": 1536 * 128 * (128 + 64), "wkv_up.weight": 512 * 128 * (128 + 128),
                 "wo.weight": 128 * 128 * 7168}
    assert shapes == published
    assert sum(published.values()) == 187_107_328 == LatentAttentionShape.of(bb).parameters()


@pytest.mark.parametrize("mla", [MLA, DIRECT_Q], ids=["q-latent", "direct-q"])
def test_graph_parameters_and_flops_equal_the_closed_forms(mla):
    exp = _exp(mla)
    bb, s = exp.backbone, exp.train.seq_len
    g = vlac.lower(exp, micro_batch=MICRO_BATCH, dtype="fp32")
    shape = LatentAttentionShape.of(bb)
    for layer in range(bb.layers):
        nodes = [n for n in g.nodes if n.layer == layer and ".attn." in n.module + "."]
        assert sum(n.params for n in nodes) == shape.parameters()
        gemms = {n.module.split(".attn.", 1)[1]: n for n in nodes if n.kind == "gemm"}
        assert {k: n.flops_fwd for k, n in gemms.items()} == {
            k: 2.0 * s * MICRO_BATCH * w for k, w in shape.gemm_weights().items()}
        attention = [n for n in nodes if n.kind == "attention"]
        assert len(attention) == 1 and attention[0].causal
        assert attention[0].flops_fwd == shape.attention_flops(s, MICRO_BATCH)
        assert attention[0].flops_bwd == 2.5 * attention[0].flops_fwd
        assert sum(n.flops_fwd for n in nodes) == shape.forward_flops(s, MICRO_BATCH)


def test_graph_flops_match_the_running_model():
    exp = _exp(MLA)
    g = vlac.lower(exp, micro_batch=MICRO_BATCH, dtype="fp32")
    assert predicted_math_flops(g) == pytest.approx(measured_flops(exp, MICRO_BATCH), rel=1e-9)


def test_fused_attention_keeps_q_k_v_output_and_log_sum_exp_at_their_own_widths():
    exp = _exp(MLA)
    bb, s = exp.backbone, exp.train.seq_len
    m = bb.mla
    g = vlac.lower(exp, micro_batch=MICRO_BATCH, dtype="fp32")
    attention = next(n for n in g.nodes if n.kind == "attention")
    tokens = MICRO_BATCH * s
    # q and the output are produced elsewhere (cat, the kernel) and charged there; what the node
    # itself owns is its output, its fp32 log-sum-exp and the kernel's two 8-byte dropout seeds
    out_and_lse = 4 * tokens * bb.heads * m.v_head_dim + 4 * tokens * bb.heads
    assert attention.saved["none"] == out_and_lse + 16
    assert attention.saved["selective"] == out_and_lse


def test_the_down_path_is_replicated_over_tp_and_runs_on_the_whole_sequence_under_sp():
    exp = _exp(MLA)
    g = vlac.lower(exp, micro_batch=MICRO_BATCH, dtype="fp32")
    shape = LatentAttentionShape.of(exp.backbone)
    attn = [n for n in g.nodes if n.layer == 0 and ".attn." in n.module + "."]
    latent = [n for n in attn if ".attn.latent" in n.module]
    assert {n.kind for n in latent} >= {"gemm", "norm"}
    assert not any(n.tp_split or n.act_tp_sharded or n.sp_split for n in latent)
    up = [n for n in attn if n.kind == "gemm" and ".attn.latent" not in n.module]
    assert up and all(n.tp_split for n in up)
    replicated = shape.replicated_parameters()
    assert sum(n.params_per_rank(tp=4) for n in attn) == replicated + (shape.parameters() - replicated) / 4
    # under sp the down-projections' FLOPs stay whole on every rank (their input is gathered)
    down_flops = sum(n.flops_fwd + n.flops_bwd for n in latent)
    assert sum(n.flops_per_rank(tp=4, sp=True) for n in latent) == down_flops


def test_the_block_picture_says_the_down_path_is_whole_on_every_tp_rank():
    from vlac.compiler.graph_report import block_picture

    g = vlac.lower(_exp(MLA), micro_batch=MICRO_BATCH, dtype="fp32")
    svg = block_picture(g, g.block_of_layer[0])
    assert svg.count("tensor parallelism: whole on every rank") == 4  # wq_down, q_norm, wkv_down, kv_norm
    standard = vlac.lower(_exp(), micro_batch=MICRO_BATCH, dtype="fp32")
    assert "whole on every rank" not in block_picture(standard, standard.block_of_layer[0])


def test_the_planner_charges_the_down_projections_whole_and_exchanges_both_head_widths():
    import numpy as np

    from vlac.compiler.hardware import Hardware
    from vlac.compiler.layer_times import _gemm_shape
    from vlac.compiler.planner import build_profile

    exp = _exp(MLA)
    bb, m = exp.backbone, exp.backbone.mla
    g = vlac.lower(exp, micro_batch=MICRO_BATCH, dtype="fp32")
    prof = build_profile(exp, g, Hardware(exp.cluster), fp8=False)
    block = prof.profiles[prof.sequence[1]]
    down = {(gm.n, gm.k) for gm in block.gemms if not gm.tp_split and not gm.sp_split}
    assert down == {(m.q_lora_rank, bb.hidden), (m.kv_lora_rank + m.qk_rope_head_dim, bb.hidden)}
    tp, sp, seqs = np.array([4]), np.array([True]), np.array([2.0])
    for gm in block.gemms:
        scale, mm, n, k, _ = _gemm_shape(gm, tp, sp, 1, 1, seqs, seqs)
        if (gm.n, gm.k) in down:  # every rank runs the whole down path on the gathered sequence
            assert scale[0] == 2.0 and (n, k) == (gm.n, gm.k)
        elif gm.tp_split:
            assert scale[0] == 0.5
    assert block.tp_regions == 2  # attention (up-projections and wo) and the MLP
    # context parallelism exchanges per-head keys (nope + rope) and values (v) of every head
    assert prof.kv_bytes_per_token == bb.heads * (m.qk_head_dim + m.v_head_dim) * g.dtype_bytes


def test_depth_variants_derive_exactly_from_one_reference():
    from vlac.compiler.graph_cache import GraphCache, with_depth

    cache = GraphCache(verify=True)  # lowers every derived graph directly too and raises on any difference
    exp = _exp(MLA, "backbone.sliding_window=4", "backbone.sliding_window_layers=global_every:2")
    for depth in (2, 5):
        cache.lower(with_depth(exp, depth))
    assert cache.stats.derived >= 1
