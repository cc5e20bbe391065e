"""docs/runtime-limits.md is generated from the runtime's limits table and must not drift."""

from pathlib import Path

from vlac.runtime.parallel.limits_doc import render_markdown
from vlac.runtime.parallel.support import LIMITS

ROOT = Path(__file__).resolve().parents[3]


def test_the_limits_doc_matches_the_table():
    committed = (ROOT / "docs" / "runtime-limits.md").read_text()
    assert committed == render_markdown(), \
        "docs/runtime-limits.md drifted: run `python -m vlac.runtime.parallel.limits_doc > docs/runtime-limits.md`"
    assert all(f"`{lim.name}`" in committed for lim in LIMITS)
