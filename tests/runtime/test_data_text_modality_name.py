"""The synthetic data loads each text modality's tokenizer under that modality's own name, so a
tokenizer problem at run time names the field the user wrote (modalities.caption.path, not
modalities.text.path)."""

from pathlib import Path

import pytest

from vlac.runtime import data as data_mod
from vlac.spec import load

TINY_VLA = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"


def _renamed_text_modality(tmp_path: Path) -> Path:
    text = TINY_VLA.read_text()
    text = text.replace("  text: {kind: text", "  caption: {kind: text")
    text = text.replace("modality_weights: {text: 1.0", "modality_weights: {caption: 1.0")
    text = text.replace("modalities: [text, image, action]", "modalities: [caption, image, action]")
    path = tmp_path / "tiny_caption.yaml"
    path.write_text(text)
    return path


def test_a_text_modality_tokenizer_is_loaded_under_its_own_name(tmp_path, monkeypatch):
    exp = load(_renamed_text_modality(tmp_path))
    assert "caption" in exp.modalities and "text" not in exp.modalities
    seen = []
    real = data_mod.text_tokenizer

    def recording(spec, corpus, name="text"):
        seen.append(name)
        return real(spec, corpus, name)

    monkeypatch.setattr(data_mod, "text_tokenizer", recording)
    data_mod.SyntheticData(exp)
    assert seen == ["caption"]


def test_a_missing_tokenizer_file_is_named_by_its_modality(tmp_path):
    path = _renamed_text_modality(tmp_path)
    spec = path.read_text().replace("caption: {kind: text, tokenizer: byte, vocab_size: 256,",
                                    "caption: {kind: text, tokenizer: bpe, vocab_size: 256, path: nowhere,")
    path.write_text(spec)
    exp = load(path)
    with pytest.raises(Exception, match=r"modalities\.caption\."):
        data_mod.SyntheticData(exp)
