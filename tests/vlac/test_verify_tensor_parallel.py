"""`vlac verify` of the tensor-parallel layouts beyond the plain decoder: expert tensor
parallelism (alone, with expert parallelism and FSDP), FP8 GEMMs under TP, tied embeddings, late
fusion and the dual stream; each through the CLI against one process, within 1e-4 relative."""

from pathlib import Path

import pytest

from vlac.verify import LayoutSyntaxError, parse_layout

from verify_helpers import invoke_verify, verify_passes

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FP8 = ["--set", "precision.fp8.enabled=true", "--set", "precision.fp8.keep_first_last_bf16=false"]
# 8 sequences (micro-batch 4) instead of tiny_vla's 16: torch._scaled_mm on CPU is a plain loop
# (~25 MFLOP/s here), so the FP8 runs' time is their token count; every layout still takes 2
# micro-batches per step but ep2 (1 per dp rank)
FP8_BATCH = ["--set", "train.global_batch_tokens=384", "--set", "parallelism.microbatch_size=4"]


def test_etp_option_splits_the_experts_over_tp():
    lay = parse_layout("fsdp2xtp2xep2+etp")
    assert (lay.dp, lay.tp, lay.ep, lay.etp, lay.zero) == (2, 2, 2, 2, 3)
    assert lay.pins(4)["etp"] == 2 and parse_layout("tp2").pins(4)["etp"] == 1
    with pytest.raises(LayoutSyntaxError, match=r"\+etp splits the experts over tp; give a tpN"):
        parse_layout("dp2+etp")


@pytest.mark.slow
def test_expert_tensor_parallelism_reproduces_one_process(monkeypatch):
    """Experts split on their inner width over tp (shared experts too), alone, and with the
    experts also split by expert over ep under FSDP: 4 ranks."""
    out = verify_passes(EXAMPLES / "tiny_vla.yaml", "tp2+etp,fsdp2xtp2xep2+etp", 6, monkeypatch)
    assert "etp2" in out


@pytest.mark.slow
def test_fp8_under_tensor_and_expert_parallelism_reproduces_one_fp8_process(monkeypatch):
    """Against the single-process FP8 run (not fp32), one step: the same weights through forward
    and backward, the experts' grouped GEMMs in FP8 too (amaxes reduced over the shards, so every
    rank scales as one process). An fp32 reassociation (a few ulps) of a GEMM input rounds a
    handful of elements to the neighbouring FP8 value (in tiny_vla's 16-sequence batch, 2 of the
    49,152 elements of block 1's attention input), each moving a row of the GEMM's output by ~1 %:
    the gradient norm of one step then differs by up to a few 1e-4 (1.7e-4 for tp2 on the
    8-sequence batch run here), hence 1e-3 (over several steps Adam turns such differences into
    different updates; see test_tensor_parallel_extras.py)."""
    verify_passes(EXAMPLES / "tiny_vla.yaml", "tp2,tp2+etp,ep2", 1, monkeypatch, *FP8, *FP8_BATCH, tolerance=1e-3)


TINY = ["--profile", "tiny"]
DUAL = ["--set", "moe=null", "--set", "fusion.stream=dual"]  # image and action tokens in the second stream


@pytest.mark.slow
@pytest.mark.parametrize("spec, layouts, args", [
    ("dense_text_1b.yaml", "tp2,fsdp2xtp2", TINY),  # tied embeddings
    ("flamingo.yaml", "tp2,tp2+nosp", TINY),  # gated cross-attention, frozen language model
    ("coca.yaml", "tp2", TINY),  # plain cross-attention with a contrastive head
    ("tiny_vla.yaml", "tp2+nosp", DUAL),  # dual stream (refused with sequence parallelism)
], ids=["tied", "flamingo", "coca", "dual"])
def test_tensor_parallel_model_variants_reproduce_one_process(monkeypatch, spec, layouts, args):
    verify_passes(EXAMPLES / spec, layouts, 6, monkeypatch, *args)


@pytest.mark.slow
def test_dual_stream_with_sequence_parallelism_fails_with_the_fix(monkeypatch):
    result = invoke_verify(monkeypatch, str(EXAMPLES / "tiny_vla.yaml"), *DUAL, "--layouts", "tp2", "--steps", "1")
    assert result.exit_code == 1
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "fusion.stream: dual" in text and "--pin sequence_parallel=false" in text
