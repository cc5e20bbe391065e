"""The emitted program trains one step of a tiny model that combines the attention features
that landed together: latent attention (backbone.mla, widths of 1 and 2), multi-token prediction
(losses.mtp, depth near seq_len) and chunked attention on alternate layers. Sinks are refused
with MLA by design (spec/latent_attention.py), so they are not in the mix."""

import json
import math
import runpy
from pathlib import Path

import vlac

ROOT = Path(__file__).resolve().parents[2]
DENSE = ROOT / "examples" / "dense_text_1b.yaml"
COMBINED = ["backbone.kv_heads=null",
            "backbone.mla={q_lora_rank: 1, kv_lora_rank: 1, qk_rope_head_dim: 2, qk_nope_head_dim: 1, v_head_dim: 1}",
            "modalities.text.tokens=14", "train.seq_len=16", "train.global_batch_tokens=128",
            "losses.mtp={depth: 14}",  # the deepest seq_len 16 allows: module 14 predicts 15 ahead
            "backbone.attention_chunk=3", "backbone.attention_chunk_layers=global_every:2"]


def test_emitted_program_trains_a_step_with_mla_mtp_and_chunks(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    exp = vlac.load(DENSE, COMBINED, profile="tiny")
    program = vlac.emit(exp, vlac.plan(exp), tmp_path / "p")
    main = runpy.run_path(str(program / "train.py"))["main"]
    result = main(max_steps=1, out_dir=tmp_path / "run")
    assert len(result["losses"]) == 1 and math.isfinite(result["losses"][0])
    steps = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if r["event"] == "step"]
    assert sorted(map(int, steps[0]["mtp_loss"])) == list(range(1, 15))
    assert all(math.isfinite(v) and v > 0 for v in steps[0]["mtp_loss"].values())
