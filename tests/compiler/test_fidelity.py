"""The cost model against published runs (benchmarks/fidelity.py): every cited layout fits,
every cited case within 15 % (a measured gap for now). Slow: it lowers nine large models."""

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def fidelity(monkeypatch):
    """benchmarks/fidelity.py, with benchmarks/ on sys.path for this test only: left there, its
    kernels.py would shadow the `kernels` package that transformers probes for."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("fidelity")


@pytest.fixture(scope="module")
def checked():
    """`fidelity.py --check` over the stacks its constants were set on, run once: (exit code, report)."""
    import contextlib
    import io

    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))
        fid = importlib.import_module("fidelity")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = fid.main(["--check", "--stack", ",".join(fid.CHECKED_STACKS)])
    return rc, out.getvalue()


@pytest.mark.slow
def test_cited_runs_fit_in_the_memory_model(checked):
    _, out = checked
    assert "cited cases: 9" in out and "do not fit in vlac's memory model: none" in out


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured gap (docs/fidelity.md, Known gaps): llama3-8b (NeMo, FP8, "
                   "8 GPUs, CP2) is predicted 15.7 % too fast without recompute, as NeMo runs it; DeepSeek-V3 "
                   "(NeMo, FP8, 1,024 GPUs, EP64) is inside the 15 % at 11.8 % too slow")
def test_cited_runs_within_tolerance(checked):
    rc, _ = checked
    assert rc == 0


def test_publisher_flops_conventions(fidelity):
    """Each NeMo row's TFLOP/s / tokens/s reproduces the Megatron formula in its convention:
    the older rows count attention non-causally, the newer ones causally (DeepSeek-V3's with its
    latent attention and its MTP module)."""

    by_name = {c.name: c for c in fidelity.CASES}
    for name, causal in (("gpt3-175b-fp8-512gpu", False), ("llama3-8b-fp8-8gpu", False),
                         ("llama3-70b-fp8-64gpu", False), ("llama3.1-405b-fp8-1024gpu", True),
                         ("qwen3-235b-a22b-fp8-256gpu", True), ("deepseek-v3-fp8-1024gpu", True)):
        case = by_name[name]
        published, _ = fidelity.publisher_flops_per_token(case)
        assert case.model.formula(case.seq, causal) == pytest.approx(published, rel=0.01)


def test_llm_foundry_rows_are_transcribed_consistently(fidelity):
    """Each llm-foundry row's model TFLOP/s / tokens/s is its 2 x params x 3 + non-causal attention
    formula (README "MFU"), to within the learned position table's share (< 1.5 %): a mistyped
    size, width or throughput breaks it."""
    rows = [c for c in fidelity.CASES if c.stack == "llm-foundry"]
    assert len(rows) >= 20
    for case in rows:
        published, _ = fidelity.publisher_flops_per_token(case)
        assert case.model.formula(case.seq, False) == pytest.approx(published, rel=0.015), case.name


def test_every_stack_names_its_spec_section(fidelity):
    import vlac

    assert {c.stack for c in fidelity.CASES} <= set(fidelity.STACKS)
    for stack in fidelity.STACKS.values():  # each is a valid spec.stack section
        vlac.load({**fidelity.spec(fidelity.CASES[0]), "stack": stack})
