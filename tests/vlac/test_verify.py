"""`vlac verify`: layout syntax, the shared micro-batch, which spec is verified, and the
equivalence of every parallel layout with one process (gloo, fp32, the tiny MoE example)."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

import vlac
from vlac.cli import app
from vlac.verify import SINGLE, LayoutSyntaxError, Report, Run, microbatch_size, parse_layout, verification_spec

from verify_helpers import invoke_verify, verify_passes

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
FLAGSHIP = ROOT / "examples" / "vla_10b_moe_h100.yaml"


@pytest.mark.parametrize("text, expect", [
    ("dp2", dict(dp=2, zero=0)),
    ("fsdp2", dict(dp=2, zero=3)),
    ("fsdp4+zero2", dict(dp=4, zero=2)),
    ("tp2", dict(tp=2, sequence_parallel=True)),
    ("tp2+nosp", dict(tp=2, sequence_parallel=False)),
    ("pp2", dict(pp=2, schedule="1f1b", virtual_stages=1)),
    ("pp2+v2", dict(pp=2, schedule="interleaved_1f1b", virtual_stages=2)),
    ("pp2+gpipe", dict(pp=2, schedule="gpipe")),
    ("ep2", dict(dp=2, ep=2)),
    ("dp4xep2", dict(dp=4, ep=2)),
    ("dp2xtp2+full", dict(dp=2, tp=2, recompute="full")),
])
def test_layout_names(text, expect):
    lay = parse_layout(text)
    for key, value in expect.items():
        assert getattr(lay, key) == value, key
    assert lay.world == lay.dp * lay.tp * lay.pp * lay.cp


@pytest.mark.parametrize("text, match", [
    ("dq2", r"'dq2' is not a degree; write dpN"),
    ("dp2xfsdp2", "repeats a dimension"),
    ("dp2+zero2", r"\+zero2 needs sharded data parallelism"),
    ("tp2+fast", r"unknown option 'fast'; options: etp, full, gpipe"),
])
def test_bad_layouts_say_what_is_valid(text, match):
    with pytest.raises(LayoutSyntaxError, match=match):
        parse_layout(text)


def test_one_micro_batch_size_serves_every_layout():
    exp = vlac.load(TINY)  # 16 sequences per step
    assert microbatch_size(exp, [SINGLE, parse_layout("dp2")]) == 8
    assert microbatch_size(exp, [SINGLE, parse_layout("dp2xpp2")]) == 4  # 2 micro-batches per replica
    assert microbatch_size(exp, [SINGLE, parse_layout("pp4")]) == 4
    with pytest.raises(ValueError, match="no micro-batch size"):
        microbatch_size(exp, [parse_layout("dp32")])


def test_a_large_spec_is_verified_through_its_tiny_profile():
    exp, note = verification_spec(FLAGSHIP)
    assert exp.backbone.hidden == 64 and "profile 'tiny'" in note and "M parameters" in note
    exp, note = verification_spec(TINY)
    assert note == "the spec as written"


def test_report_fails_a_layout_beyond_tolerance_or_without_results():
    ref = Run(SINGLE, 1, losses=[2.0, 1.0], grad_norms=[1.0, 1.0])
    close = Run(parse_layout("dp2"), 2, losses=[2.0, 1.00005], grad_norms=[1.0, 1.0])
    far = Run(parse_layout("tp2"), 2, losses=[2.0, 1.001], grad_norms=[1.0, 1.0])
    broken = Run(parse_layout("pp2"), 2, error="RuntimeError: boom")
    report = Report("", 8, 2, 1e-4, ref, [close, far, broken])
    assert [report.passed(r) for r in report.runs] == [True, False, False]
    assert not report.ok and Report("", 8, 2, 1e-4, ref, [close]).ok


def test_cli_rejects_bad_input_with_exit_code_2():
    result = CliRunner().invoke(app, ["verify", str(TINY), "--layouts", "dp2,zz9"])
    assert result.exit_code == 2
    assert "'zz9' is not a degree" in result.output


EQUIVALENCE_2_LAYERS = "dp2,fsdp2,tp2,pp2,ep2,dp2xtp2,tp2+selective"
EQUIVALENCE_4_LAYERS = "pp2+v2"


@pytest.mark.slow
@pytest.mark.parametrize("layouts, sets", [(EQUIVALENCE_2_LAYERS, []),
                                           (EQUIVALENCE_4_LAYERS, ["--set", "backbone.layers=4"])])
def test_every_layout_reproduces_the_single_process_run(layouts, sets, monkeypatch):
    """Through the CLI, 10 steps each: the table's relative differences stay within 1e-4."""
    verify_passes(TINY, layouts, 10, monkeypatch, *sets)


@pytest.mark.slow
def test_the_flagship_verifies_through_its_tiny_profile(monkeypatch):
    """Video encoders, continuous projectors, bidirectional image masks and the contrastive head
    under sharded data, tensor, pipeline and expert parallelism."""
    result = invoke_verify(monkeypatch, str(FLAGSHIP), "--layouts", "fsdp2,tp2,pp2,ep2", "--steps", "5")
    assert result.exit_code == 0, result.output
    assert "profile 'tiny'" in result.output


@pytest.mark.slow
def test_dropless_experts_under_expert_parallelism_reproduce_one_process(monkeypatch):
    """moe.capacity_factor: null with the experts split over ep: the routed copies travel with
    uneven all-to-alls (plain, and under ZeRO-3, which gathers the experts around their dropless
    method); under tp each rank routes its own sequence shard (the balancing loss and the
    replicated weights' gradients summed over tp) and exchanges its copies within its ep group."""
    verify_passes(TINY, "ep2,fsdp4xep2,dp2xtp2xep2", 3, monkeypatch, "--set", "moe.capacity_factor=null",
                  plan_pattern=r"ep2 ")
