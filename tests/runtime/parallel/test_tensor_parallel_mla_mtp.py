"""Latent attention (runtime/parallel/latent_attention_tp.py) and the multi-token prediction
modules (runtime/parallel/mtp_tensor_parallel.py) under tensor parallelism, gradient by gradient
on two gloo ranks against one process (test_tensor_parallel_extras.py's harness). Each replicated
weight (the latent down path, the MTP norms and projection) must get the whole gradient: `vlac
verify` compares only the loss and the gradient norm after 3 steps, which a missing sum of the
shared rotated key's gradient moves by 1.7e-4 (test_verify_mla.py), near its 1e-4 tolerance."""

from __future__ import annotations

import pytest
from process_cases import spawn_cases
from test_tensor_parallel_extras import _case, assert_same_grads

MLA = ["backbone.kv_heads=null",
       "backbone.mla={q_lora_rank: 24, kv_lora_rank: 16, qk_rope_head_dim: 8, qk_nope_head_dim: 8, v_head_dim: 12}"]
DIRECT_Q = ["backbone.kv_heads=null",
            "backbone.mla={q_lora_rank: null, kv_lora_rank: 16, qk_rope_head_dim: 4, qk_nope_head_dim: 12, v_head_dim: 8}"]
MTP = ["losses.mtp.depth=2", "losses.mtp.weight=0.3"]

# name -> (spec, sets, profile, pins), run by one spawn of 2 ranks
CASES = {
    "mla-sp": ("dense_text_1b.yaml", MLA, "tiny", {"sequence_parallel": True}),
    "mla-nosp": ("dense_text_1b.yaml", MLA, "tiny", {"sequence_parallel": False}),
    "mla-direct-q-nosp": ("dense_text_1b.yaml", DIRECT_Q, "tiny", {"sequence_parallel": False}),
    "mtp-moe-sp": ("tiny_vla.yaml", MTP, None, {"sequence_parallel": True}),  # MoE MTP blocks
    # dropless MoE MTP blocks route their own sequence shard (parallelize_mtp's route_locally)
    "mtp-dropless-sp": ("tiny_vla.yaml", [*MTP, "moe.capacity_factor=null"], None, {"sequence_parallel": True}),
    "mtp-mla-sp": ("dense_text_1b.yaml", [*MLA, *MTP], "tiny", {"sequence_parallel": True}),
    "mtp-mla-nosp": ("dense_text_1b.yaml", [*MLA, *MTP], "tiny", {"sequence_parallel": False}),
}


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> dict[str, dict]:
    return spawn_cases(_case, CASES, nprocs=2, out=tmp_path_factory.mktemp("tp-mla-mtp") / "grads.json")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_latent_attention_and_mtp_gradients_under_tp_match_one_process(two_rank_results, case):
    result = two_rank_results[case]
    assert_same_grads(result, tol=1e-5)
    names = result["grads"]
    if case.startswith("mla") or case.startswith("mtp-mla"):
        assert any(".attn.latent.wkv_down." in n for n in names)  # the replicated down path is compared
    if case.startswith("mtp"):
        assert any(n.startswith("mtp.1.proj.") for n in names) and any(n.startswith("mtp.0.embed_norm.") for n in names)
