"""Megatron-Core's recompute_modules on the megatron-te stack (stack.recompute_modules,
compiler/stack_costs.py): selective recompute reruns the named modules only. core_attn (the
default) drops the attention core's own saved bytes and reruns its forward; mla_up_proj drops
latent attention's up-projection outputs, RoPE and the q/k concatenations and reruns the two
up-projection GEMMs; mlp drops a dense layer's MLP activations (not a MoE layer's) and reruns
its GEMMs."""

from __future__ import annotations

import numpy as np
import pytest

import vlac
from vlac.compiler.planner import Search


def spec(modules: list[str] | None) -> dict:
    stack = {"preset": "megatron-te"}
    if modules is not None:
        stack["recompute_modules"] = modules
    return {"name": "recompute-modules",
            "modalities": {"text": {"kind": "text", "tokenizer": "bpe", "vocab_size": 1024, "tokens": 254}},
            "backbone": {"layers": 2, "hidden": 256, "heads": 4, "ffn_hidden": 512, "context_length": 256,
                         "mla": {"q_lora_rank": 64, "kv_lora_rank": 32, "qk_nope_head_dim": 32,
                                 "qk_rope_head_dim": 16, "v_head_dim": 32}},
            "moe": {"layers": "from:1", "experts": 4, "top_k": 2, "expert_hidden": 128, "capacity_factor": None},
            "data": {"mixture": [{"name": "t", "modalities": ["text"]}]},
            "train": {"seq_len": 256, "global_batch_tokens": 256 * 8},
            "cluster": {"preset": "h100-sxm", "nodes": 1, "gpus_per_node": 8},
            "stack": stack}


@pytest.fixture(scope="module")
def graph():
    return vlac.lower(vlac.load(spec(None)))


def profile(graph, modules):
    exp = vlac.load(spec(modules))
    return Search(exp, exp.cluster, graph).model.p


def kept(graph, modules, select) -> dict[str, float]:
    """Selective and none kept bytes summed over the nodes `select` picks, on that stack."""
    p = profile(graph, modules)
    moe = {n.module.split(".")[2] for n in graph.nodes if n.expert and n.module.startswith("model.layers.")}
    out = {"none": 0.0, "selective": 0.0}
    for n in graph.nodes:
        if select(n):
            k = p.stack_costs.saved(n, p.seq_len, moe_block=n.module.split(".")[2] in moe)
            out["none"] += k["none"]
            out["selective"] += k["selective"]
    return out


def up_proj(n):
    return n.module.startswith("model.layers.1.attn") and (
        n.module.endswith((".wq_up", ".wkv_up", ".rotary")) or n.name.rsplit(".", 1)[-1].startswith("cat"))


def test_mla_up_proj_drops_the_up_projections_and_keeps_the_attention_core(graph):
    default, up = kept(graph, None, up_proj), kept(graph, ["mla_up_proj"], up_proj)
    assert default["none"] > 0 and default["selective"] == default["none"]  # core_attn keeps them
    assert up["selective"] == 0.0 and up["none"] == default["none"]
    attention = lambda n: n.kind == "attention" and n.module.startswith("model.layers.1.")  # noqa: E731
    core, not_core = kept(graph, None, attention), kept(graph, ["mla_up_proj"], attention)
    assert core["selective"] < core["none"] and not_core["selective"] == not_core["none"]


def test_mlp_reruns_dense_layers_only(graph):
    # the MLP's nodes, not the norm before it (its output is the checkpoint's input, kept)
    dense_mlp = lambda n: n.module == "model.layers.0.mlp" or n.module.startswith("model.layers.0.mlp.")  # noqa: E731
    moe_mlp = lambda n: n.module == "model.layers.1.mlp" or n.module.startswith("model.layers.1.mlp.")  # noqa: E731
    dense = kept(graph, ["mlp"], dense_mlp)
    assert dense["none"] > 0 and dense["selective"] == 0.0
    assert kept(graph, ["mlp"], moe_mlp) == kept(graph, None, moe_mlp)


def test_the_rerun_is_the_modules_forward(graph):
    def rerun(modules):
        p = profile(graph, modules)
        t = p.times([1], [False], [1], [1], [1], [1])
        return {q.key[0] + ("-moe" if q.moe else ""): (float(t["selective_rerun"][0, j]), float(t["attn_fwd"][0, j]),
                                                        float(t["gemm_fwd"][0, j]))
                for j, q in enumerate(p.profiles) if q.kind == "block"}
    default, up, mlp = rerun(None), rerun(["mla_up_proj"]), rerun(["mlp"])
    for key, (r, attn, gemm) in default.items():
        assert r == pytest.approx(attn)  # core_attn: the attention forward
    assert 0 < up["block-moe"][0] < up["block-moe"][2]  # two of the block's GEMMs, no attention core
    assert mlp["block-moe"][0] == 0.0 and 0 < mlp["block"][0] < mlp["block"][2]
    assert not np.isclose(up["block-moe"][0], default["block-moe"][0])
