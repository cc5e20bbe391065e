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


def test_llava_example(tmp_path, monkeypatch):
    """The LLaVA example's tower and spec: the encoder is read from the spec file's folder, frozen
    with the language model (only the projector trains), and the quoted error is real."""
    text = DOC.read_text()
    monkeypatch.chdir(tmp_path)
    exec(_block(text, "python", "Qwen3ForCausalLM"), {})  # the first example's checkpoint
    exec(_block(text, "python", "CLIPVisionModel("), {})
    spec_text = _block(text, "yaml", "name: llava-tiny")
    (tmp_path / "llava-tiny.yaml").write_text(spec_text)
    exp = vlac.load(tmp_path / "llava-tiny.yaml")
    enc = exp.modalities["image"].encoder
    assert enc.hf == str((tmp_path / "clip-tiny").resolve()) and (enc.layer, enc.freeze) == (-2, True)
    assert exp.backbone.freeze and exp.modalities["question"].vocab_size == 512
    (tmp_path / "llava-tiny.yaml").write_text(spec_text.replace("tokens: 16,", "tokens: 17,"))
    with pytest.raises(SpecError) as err:
        vlac.load(tmp_path / "llava-tiny.yaml")
    quoted = re.search(r"```\n(modalities\.image\.tokens: .*?) \(", text).group(1)
    assert quoted in str(err.value)


@pytest.mark.slow
def test_worked_example_fine_tunes_and_exports_through_the_cli(tmp_path, monkeypatch):
    """Issue 14's "done when": the guide's checkpoint and spec, its `vlac submit` (local executor, two
    data-parallel processes) and `vlac export` commands as written; transformers loads the export
    with the trained model's logits and the checkpoint's tokenizer."""
    import shlex

    import torch
    import transformers
    from typer.testing import CliRunner

    from vlac.cli import app
    from vlac.runtime.checkpoint import Checkpointer
    from vlac.runtime.model import build_model
    from vlac.runtime.optim import build_optimizer
    from vlac.runtime.tokenizers.text import text_tokenizer

    text = DOC.read_text()
    monkeypatch.chdir(tmp_path)
    exec(_block(text, "python", "save_pretrained"), {})
    (tmp_path / "qwen3-tiny.yaml").write_text(_block(text, "yaml", "from_hf"))
    commands = re.search(r"```\n(vlac submit .*?)```", text, re.S).group(1).splitlines()
    assert [c.split()[1] for c in commands] == ["submit", "export"]
    for command in commands:
        result = CliRunner().invoke(app, shlex.split(command)[1:])
        assert result.exit_code == 0, (command, result.output)
    exp = vlac.load(tmp_path / "qwen3-tiny.yaml")
    sentence = "the robot sees a red cup"
    ids = text_tokenizer(exp.modalities["text"], ()).encode(sentence)
    exported = tmp_path / "exported" / "qwen3-tiny"
    assert transformers.AutoTokenizer.from_pretrained(exported)(sentence)["input_ids"] == ids
    step_dir = sorted((tmp_path / "runs" / "qwen3-tiny" / "run" / "checkpoints").glob("step_*"))[-1]
    assert step_dir.name.endswith(str(exp.train.total_steps))
    model = build_model(exp)
    Checkpointer(step_dir.parent, 1, True).load(step_dir, model, build_optimizer(model, exp))
    offset, size = exp.vocab_layout().range_of("text").offset, exp.modalities["text"].vocab_size
    tokens = torch.tensor([ids])
    with torch.no_grad():
        ours = model.eval()({"tokens": tokens + offset})["logits"][..., offset:offset + size]
        theirs = transformers.AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)(input_ids=tokens).logits
        start = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "qwen3-tiny", dtype=torch.float32)(input_ids=tokens).logits
    torch.testing.assert_close(theirs[..., :size], ours, atol=1e-5, rtol=0)
    assert (theirs[..., :size] - start[..., :size]).abs().max() > 1e-4  # trained: not the starting weights
