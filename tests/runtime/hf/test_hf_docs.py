"""docs/pretrained.md's worked example runs as written: its Python makes the checkpoint, its spec
loads from it, the vocabulary table is the one the model card prints, the quoted error is real."""

import re
from pathlib import Path

import pytest
import yaml

import vlac
from vlac.spec import SpecError

DOC = Path(__file__).resolve().parents[3] / "docs" / "pretrained.md"


def _block(text: str, lang: str, containing: str) -> str:
    """The first `lang` code block of the guide that contains `containing`."""
    return next(b for b in re.findall(rf"```{lang}\n(.*?)```", text, re.S) if containing in b)


def test_worked_example(tmp_path, monkeypatch):
    from vlac.runtime.hf.card import vocab_table

    text = DOC.read_text()
    monkeypatch.chdir(tmp_path)
    exec(_block(text, "python", "save_pretrained"), {})
    spec = yaml.safe_load(_block(text, "yaml", "from_hf"))
    exp = vlac.load(spec)
    assert exp.backbone.init.hf == str((tmp_path / "qwen3-tiny").resolve())
    assert exp.backbone.qk_norm and exp.modalities["text"].vocab_size == 512
    assert "\n".join(vocab_table(exp)) in text
    spec["backbone"]["heads"] = 8
    with pytest.raises(SpecError) as err:
        vlac.load(spec)
    quoted = re.search(r"```\n(backbone\.heads: .*?) \(", text).group(1)
    assert quoted in str(err.value)
