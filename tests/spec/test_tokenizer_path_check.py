"""A corrupt tokenizer.json under modalities.NAME.path is a spec issue at validate time, naming the
field (before: compile and emit passed, and the emitted program died at start with a
TokenizerLoadError traceback from runtime/data.py). The check parses JSON only: no tokenizers import."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import vlac
from vlac.spec import SpecError

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"
BPE = ["modalities.text.tokenizer=bpe", "modalities.text.vocab_size=512"]
GOOD = {"version": "1.0", "added_tokens": [], "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}


def _spec_with(tmp_path, content: str | None, as_folder: bool) -> tuple[Path, list[str]]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(TINY.read_text())
    tok = tmp_path / "tok"
    tok.mkdir()
    if content is not None:
        (tok / "tokenizer.json").write_text(content)
    rel = "tok" if as_folder else "tok/tokenizer.json"  # relative to the spec file, as the program reads it
    return spec, [*BPE, f"modalities.text.path={rel}"]


@pytest.mark.parametrize("content, what", [
    ('{"model": ', "not JSON"),
    ("[1, 2]", "needs a `model` object with a `vocab`"),
    ('{"model": {"type": "BPE"}}', "needs a `model` object with a `vocab`"),
    ('{"model": {"vocab": {}}, "added_tokens": 3}', "`added_tokens` must be a list"),
])
@pytest.mark.parametrize("as_folder", [True, False])
def test_corrupt_tokenizer_json_is_a_spec_issue_naming_the_field(tmp_path, content, what, as_folder):
    spec, overrides = _spec_with(tmp_path, content, as_folder)
    with pytest.raises(SpecError) as e:
        vlac.load(spec, overrides)
    assert [i.path for i in e.value.issues] == ["modalities.text.path"]
    assert what in str(e.value) and "tokenizer.json" in str(e.value)


def test_well_formed_or_absent_tokenizer_passes(tmp_path):
    spec, overrides = _spec_with(tmp_path, json.dumps(GOOD), True)
    assert vlac.load(spec, overrides).modalities["text"].path == "tok"
    other = tmp_path / "other"
    other.mkdir()
    spec2, overrides2 = _spec_with(other, None, True)  # not there yet: left to run time
    vlac.load(spec2, overrides2)


def test_validate_does_not_import_the_tokenizers_library(tmp_path):
    spec, overrides = _spec_with(tmp_path, '{"model": ', True)
    code = ("import sys, vlac\n"
            f"try: vlac.load({str(spec)!r}, {overrides!r})\n"
            "except ValueError: pass\n"
            "print('tokenizers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
