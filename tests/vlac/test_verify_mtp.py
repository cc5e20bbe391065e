"""`vlac verify` of multi-token prediction (runtime/mtp.py, DeepSeek-V3) under every parallelism
that splits it (gloo, fp32, 1e-4 relative against one process): tiny_vla with two MTP modules of
MoE blocks under pipeline (the modules on the last stage, the input embedding sent from the
first), tensor with sequence parallelism, FSDP and context parallelism (the shift by k made on
the whole sequence before the cut); a dense model under tensor parallelism without sequence
parallelism, and a pipeline with tied embeddings."""

from pathlib import Path

import pytest

from verify_helpers import verify_passes

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"
MTP = ["--set", "losses.mtp.depth=2", "--set", "losses.mtp.weight=0.3"]

pytestmark = pytest.mark.slow


def test_mtp_under_pp_tp_fsdp_cp_reproduces_one_process(monkeypatch):
    out = verify_passes(TINY, "pp2,tp2,fsdp2,cp2", 2, monkeypatch, *MTP)
    assert "tp2+sp" in out


def test_dense_mtp_under_tp_without_sp_and_a_tied_pipeline(monkeypatch):
    verify_passes(TINY, "tp2+nosp", 2, monkeypatch, *MTP, "--set", "moe=null")
    verify_passes(TINY, "pp2", 2, monkeypatch, *MTP, "--set", "backbone.tied_embeddings=true")
