from pathlib import Path

from vlac.spec.docs import render_markdown, undocumented_fields

ROOT = Path(__file__).resolve().parents[2]


def test_docs_match_the_schema():
    committed = (ROOT / "docs" / "spec.md").read_text()
    assert committed == render_markdown(), "docs/spec.md drifted: run `python -m vlac.spec.docs > docs/spec.md`"


def test_every_field_is_documented():
    assert undocumented_fields() == []
