"""Running `vlac verify` through the CLI in tests, and reading its table.

Each run of a layout (and of the single-process reference) is kept for the rest of the session
and reused when a later test asks for the same run again: several test files verify the same
spec with the same micro-batch size, and so start the same processes for the same reference (and
the README's layouts) over and over. A run of N steps also serves a request for fewer: a step's
loss and gradient norm depend on the step index, the spec (the learning-rate schedule reads
train.total_steps) and the micro-batch size, not on how many steps the run goes on for
(`--steps` only stops it), so its first M steps are the M-step run's, bit for bit.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import vlac.verify
from typer.testing import CliRunner

from vlac.cli import app
from vlac.spec import Experiment
from vlac.verify import Layout, Run

DIFF = re.compile(r"\d\.\d\de[+-]\d\d")

_RUNS: dict[tuple[str, Layout, int], Run] = {}  # (spec as JSON, layout, micro-batch size) -> the longest run


def reusing_runs(run_layout):
    """`vlac.verify.run_layout` that answers a run asked for again from `_RUNS` (the first
    `steps` of an earlier run at least as long); failed runs are not kept."""

    def cached(exp: Experiment, layout: Layout, mb: int, steps: int, workdir: Path, *args, **kwargs) -> Run:
        key = (exp.model_dump_json(), layout, mb)
        kept = _RUNS.get(key)
        if kept is not None and len(kept.losses) >= steps:
            return replace(kept, losses=kept.losses[:steps], grad_norms=kept.grad_norms[:steps])
        run = run_layout(exp, layout, mb, steps, workdir, *args, **kwargs)
        if not run.error and len(run.losses) == steps:
            _RUNS[key] = run
        return run

    return cached


def invoke_verify(monkeypatch, *args: str):
    """`vlac verify ARGS` in this process, its runs shared with the session's other verifications."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(vlac.verify, "run_layout", reusing_runs(vlac.verify.run_layout))
    result = CliRunner().invoke(app, ["verify", *args])
    print(result.output)
    return result


def verify_passes(spec: Path | str, layouts: str, steps: int, monkeypatch, *args: str, tolerance: float = 1e-4,
                  plan_pattern: str | None = None) -> str:
    """Run `vlac verify SPEC --layouts ... --steps N ARGS`; it must exit 0 and every layout's row
    must pass with both relative differences (loss, gradient norm) within `tolerance`, and, when
    given, show a plan matching `plan_pattern` (the layout really ran as asked). Returns the output."""
    result = invoke_verify(monkeypatch, str(spec), "--layouts", layouts, "--steps", str(steps),
                           "--tolerance", str(tolerance), *args)
    assert result.exit_code == 0, result.output
    for name in layouts.split(","):
        row = next(line for line in result.output.splitlines() if line.strip("│ ").startswith(name + " "))
        diffs = [float(x) for x in DIFF.findall(row)]
        assert len(diffs) == 2 and max(diffs) <= tolerance and "pass" in row, row
        if plan_pattern is not None:
            assert re.search(plan_pattern, row), row
    return result.output
