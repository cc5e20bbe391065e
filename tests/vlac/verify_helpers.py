"""Running `vlac verify` through the CLI in tests, and reading its table."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from vlac.cli import app

DIFF = re.compile(r"\d\.\d\de[+-]\d\d")


def verify_passes(spec: Path | str, layouts: str, steps: int, monkeypatch, *args: str, tolerance: float = 1e-4,
                  plan_pattern: str | None = None) -> str:
    """Run `vlac verify SPEC --layouts ... --steps N ARGS`; it must exit 0 and every layout's row
    must pass with both relative differences (loss, gradient norm) within `tolerance`, and, when
    given, show a plan matching `plan_pattern` (the layout really ran as asked). Returns the output."""
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["verify", str(spec), "--layouts", layouts, "--steps", str(steps),
                                      "--tolerance", str(tolerance), *args])
    print(result.output)
    assert result.exit_code == 0, result.output
    for name in layouts.split(","):
        row = next(line for line in result.output.splitlines() if line.strip("│ ").startswith(name + " "))
        diffs = [float(x) for x in DIFF.findall(row)]
        assert len(diffs) == 2 and max(diffs) <= tolerance and "pass" in row, row
        if plan_pattern is not None:
            assert re.search(plan_pattern, row), row
    return result.output
