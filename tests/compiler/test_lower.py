"""Lowering: what each node is charged, how a repeated block is reused, how figures divide over
parallel layouts. Accuracy against the running model is in test_analysis.py."""

import math
from dataclasses import asdict
from pathlib import Path

import pytest

import vlac
from vlac.compiler.graph import RECOMPUTE
from vlac.runtime.model import build_model

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
FLAGSHIP = ROOT / "examples" / "vla_10b_moe_h100.yaml"


def _decoder(g, layer):
    return [n for n in g.nodes if n.layer == layer]


def test_params_match_the_real_module_and_split_by_category():
    for exp in (vlac.load(TINY), vlac.load(FLAGSHIP, profile="tiny")):
        g = vlac.lower(exp, dtype="fp32")
        named = dict(build_model(exp, "meta").named_parameters())
        assert g.params_total == sum(p.numel() for p in named.values())
        assert sum(n.params for n in g.nodes) == g.params_total
        assert sum(n.params_expert for n in g.nodes) == sum(p.numel() for k, p in named.items() if ".experts." in k)
        embedding = sum(p.numel() for k, p in named.items() if k.split(".")[0] in ("embed", "pos_embed", "head"))
        assert sum(n.params_embedding for n in g.nodes) == embedding


def test_flagship_size_and_one_block_analysed_for_24_layers():
    g = vlac.lower(vlac.load(FLAGSHIP))
    assert 9e9 < g.params_total < 11e9, g.params_total
    assert 2e9 < g.params_active < 3e9, g.params_active
    assert set(g.blocks) == {"moe"} and g.n_layers == 24
    assert g.block_paths["moe"] == [f"model.layers.{i}" for i in range(24)]


def test_a_layer_costs_the_same_at_any_depth():
    shallow = vlac.lower(vlac.load(FLAGSHIP, ["backbone.layers=3"], profile="tiny"))
    deep = vlac.lower(vlac.load(FLAGSHIP, ["backbone.layers=9"], profile="tiny"))

    def costs(g, layer):
        return [{k: v for k, v in asdict(n).items() if k not in ("name", "module", "layer")} for n in _decoder(g, layer)]

    assert costs(shallow, 1) == costs(deep, 1) == costs(deep, 7)
    assert len(deep.blocks) == len(shallow.blocks) == 1


def test_causal_attention_is_counted_as_causal():
    causal = vlac.lower(vlac.load(TINY, ["moe=null"]), dtype="fp32")
    masked = vlac.lower(vlac.load(TINY, ["moe=null", "fusion.attention_mask=prefix_lm"]), dtype="fp32")
    a = next(n for n in causal.nodes if n.kind == "attention")
    b = next(n for n in masked.nodes if n.kind == "attention")
    bb = vlac.load(TINY).backbone
    s = 48
    dense = 2 * bb.heads * s * s * 2 * bb.d_head  # QK^T and PV over every (query, key) pair
    assert (a.causal, b.causal) == (True, False)
    assert (a.flops_fwd, b.flops_fwd) == (dense / 2, dense)
    assert a.flops_bwd == 2.5 * a.flops_fwd  # FlashAttention's backward recomputes QK^T


def test_moe_counts_routed_tokens_and_shows_capacity_padding_separately():
    exp = vlac.load(TINY, ["moe.shared_experts=0"])
    g = vlac.lower(exp, dtype="fp32")
    moe, d, s = exp.moe, exp.backbone.hidden, exp.train.seq_len
    f = moe.expert_hidden
    capacity = math.ceil(s * moe.top_k * moe.capacity_factor / moe.experts)
    experts = [n for n in _decoder(g, 0) if n.expert and n.kind == "gemm"]
    assert len(experts) == 3  # w1, w3, w2 as batched GEMMs
    useful = 3 * 2 * s * moe.top_k * d * f  # forward FLOPs of the routed token copies
    padding = 3 * 2 * (moe.experts * capacity - s * moe.top_k) * d * f
    assert sum(n.flops_fwd for n in experts) == useful
    assert sum(n.flops_overcompute for n in experts) == 3 * padding  # forward + 2x backward
    router = [n for n in _decoder(g, 0) if n.kind == "router"]
    assert len(router) == 1 and router[0].flops_fwd == 2 * s * d * moe.experts


def test_dropless_experts_are_costed_for_every_routed_token():
    exp = vlac.load(FLAGSHIP, ["moe.capacity_factor=null"], profile="tiny")
    g = vlac.lower(exp, dtype="fp32")
    (experts,) = [n for n in _decoder(g, 1) if n.expert and n.kind == "gemm"]
    moe, d, s, f = exp.moe, exp.backbone.hidden, exp.train.seq_len, exp.moe.expert_hidden
    routed = s * moe.top_k
    assert experts.flops_fwd == 2 * routed * d * f * 3  # w1, w3, w2 for every routed copy
    # group padding is data dependent: charged at its bound, align - 1 rows per expert
    padding = moe.experts * 15
    assert experts.flops_overcompute == pytest.approx((experts.flops_fwd + experts.flops_bwd) * padding / routed)
    assert experts.saved["none"] > 0 and experts.saved["selective"] == 4 * (padding + routed) * (2 * f + d)


def test_figures_divide_over_tensor_sequence_context_and_expert_parallelism():
    g = vlac.lower(vlac.load(TINY), dtype="fp32")  # causal: no mask shared by the layers
    layer = _decoder(g, 1)
    none = sum(n.saved["none"] for n in layer)
    # sequence parallelism splits every saved byte of a block; without it norms and the residual
    # stream stay whole on every rank while the attention/MLP inner activations split
    assert sum(n.saved_per_rank("none", tp=4, sp=True) for n in layer) == pytest.approx(none / 4)
    sharded = sum(n.saved["none"] for n in layer if n.act_tp_sharded)
    assert 0 < sharded < none
    assert sum(n.saved_per_rank("none", tp=4) for n in layer) == pytest.approx(none - sharded * 3 / 4)
    norms = [n for n in layer if n.kind == "norm"]
    assert norms and not any(n.act_tp_sharded for n in norms) and all(n.sp_split for n in norms)
    # tensor parallelism splits attention and the dense/shared MLP GEMMs, not the routed experts
    assert all(n.tp_split for n in layer if n.kind == "attention")
    assert not any(n.tp_split for n in layer if n.expert or n.kind == "router")
    assert any(n.tp_split for n in layer if "shared" in n.module and n.kind == "gemm")
    # context parallelism splits everything; expert parallelism splits expert weights only
    assert g.saved_bytes("full", cp=4) == pytest.approx(g.saved_bytes("full") / 4)
    assert g.flops_per_rank(cp=2) == pytest.approx(g.flops_executed() / 2)
    expert = sum(n.params_expert for n in g.nodes)
    assert g.params_per_rank(ep=4) == pytest.approx(g.params_total - expert * 3 / 4)
    split = sum(n.params_dense + n.params_embedding for n in g.nodes if n.tp_split)
    assert g.params_per_rank(tp=2) == pytest.approx(g.params_total - split / 2)


def test_recompute_policies_order_saved_bytes_and_full_keeps_the_block_input():
    g = vlac.lower(vlac.load(TINY), dtype="fp32")
    block = [lc for lc in g.layers() if 0 <= lc.layer < g.n_layers][1]
    assert block.saved["none"] > block.saved["selective"] > block.saved["full"] > 0
    assert block.saved["full"] == 1 * 48 * 64 * 4  # micro-batch x seq x hidden fp32 values
    assert g.boundary_bytes == block.saved["full"]


def test_full_recompute_stops_after_the_last_saved_tensor():
    # torch.utils.checkpoint stops recomputing once the last tensor the forward saved exists
    # again: the MLP's last GEMM only saves its input, so it is not rerun
    g = vlac.lower(vlac.load(TINY, ["moe=null"]), dtype="fp32")
    layer = {n.module.split(".", 3)[-1]: n for n in _decoder(g, 0) if n.kind == "gemm"}
    assert not layer["mlp.w2"].recomputed and layer["mlp.w2"].flops_recompute("full") == 0
    assert layer["attn.wq"].flops_recompute("full") == layer["attn.wq"].flops_fwd
    assert all(n.flops_recompute("selective") == 0 for n in _decoder(g, 0))


def test_fp8_policy_reasons():
    g = vlac.lower(vlac.load(FLAGSHIP))
    reasons = {n.fp8_reason for n in g.nodes if n.kind in ("gemm", "router", "attention")}
    assert any("router" in r for r in reasons) and any("output head" in r for r in reasons)
    assert any("first/last decoder layer" in r for r in reasons)
    eligible = [n for n in g.nodes if n.fp8_eligible]
    assert eligible and all(0 < n.layer < g.n_layers - 1 for n in eligible)
    assert all(n.gemm_mnk[1] % 16 == 0 and n.gemm_mnk[2] % 16 == 0 for n in eligible)


def test_layer_graph_is_a_chain_with_costs():
    g = vlac.lower(vlac.load(TINY))
    lg = g.layer_graph()
    assert list(lg.nodes) == [-1, 0, 1, 2]
    assert all(lg.nodes[n]["flops"] >= 0 for n in lg.nodes)
    assert lg.edges[0, 1]["bytes"] == 48 * 64 * 4


def test_lowering_is_deterministic():
    exp = vlac.load(FLAGSHIP, profile="tiny")
    a, b = vlac.lower(exp), vlac.lower(exp)
    assert [asdict(n) for n in a.nodes] == [asdict(n) for n in b.nodes]
    assert {n.kind for n in a.nodes} >= {"gemm", "attention", "norm", "router", "embedding", "loss", "input"}
    assert set(RECOMPUTE) == set(a.nodes[0].saved)
