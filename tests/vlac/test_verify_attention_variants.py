"""`vlac verify` of chunked attention and attention sinks: context parallelism (the chunks cut on
global positions; the sink column beside the gathered keys) and tensor parallelism with sequence
parallelism (the sink logits split with the heads) reproduce the single-process losses and
gradient norms (gloo, fp32). One spec holds both: chunked layers (a chunk of 5 straddles the cp
layout's chunks of 8 tokens) alternate with global ones, sinks on every layer."""

from pathlib import Path

import pytest

from verify_helpers import verify_passes

ROOT = Path(__file__).resolve().parents[2]
CHUNKS_AND_SINKS = ["--profile", "tiny", "--set", "backbone.attention_chunk=5",
                    "--set", "backbone.attention_chunk_layers=global_every:2", "--set", "backbone.attention_sinks=true"]


@pytest.mark.slow
def test_chunked_attention_with_sinks_under_cp2_and_tp2_reproduces_one_process(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    verify_passes(ROOT / "examples" / "dense_text_1b.yaml", "cp2,tp2", 4, monkeypatch, *CHUNKS_AND_SINKS,
                  plan_pattern=r"\bcp2\b|\btp2\+sp\b")
