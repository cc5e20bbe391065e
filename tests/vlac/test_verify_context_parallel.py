"""`vlac verify` under context parallelism (plan.cp > 1): every composed layout reproduces the
single-process losses and gradient norms (gloo, fp32), with the causal tiny MoE example (also in
pipeline stages that each run context parallel), a prefix-LM mask with segment memory, and the
flagship's bidirectional image masks, video encoders and contrastive head (its tiny profile)."""

from pathlib import Path

import pytest

from verify_helpers import verify_passes

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
FLAGSHIP = ROOT / "examples" / "vla_10b_moe_h100.yaml"

PREFIX_LM = ["--set", "fusion.attention_mask=prefix_lm", "--set", "memory.segment_length=16",
             "--set", "memory.memory_tokens=2"]


def verify(spec: Path, layouts: str, steps: int, sets: list[str], monkeypatch) -> None:
    verify_passes(spec, layouts, steps, monkeypatch, *sets, plan_pattern=r"\bcp[24]\b")  # really context parallel


@pytest.mark.slow
@pytest.mark.parametrize("spec, layouts, sets", [
    # cp2 and fsdp2xcp2 run below; cp2xpp2: each pipeline stage context parallel (MoE layers on both)
    (TINY, "dp2xcp2,tp2xcp2,ep2xcp2,cp4,cp2xpp2", []),
    (TINY, "cp2+full", PREFIX_LM),
    (FLAGSHIP, "cp2,fsdp2xcp2", []),
    (ROOT / "examples" / "transfusion.yaml", "cp2", []),  # flow-matching noise drawn for the whole sequence
], ids=["tiny-causal", "tiny-prefix-lm-segments", "flagship-bidirectional-image", "transfusion-flow"])
def test_context_parallel_layouts_reproduce_the_single_process_run(spec, layouts, sets, monkeypatch):
    verify(spec, layouts, 5, sets, monkeypatch)
