"""The checkpoint's own tokenizer for the text modality (issue 14, item 4): `backbone: {from_hf}`
points the text modality at the folder's tokenizer.json, so vlac's text ids are the checkpoint's,
each landing on the pretrained embedding row it was trained with; export hands the files back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hf_models import COMMON, experiment, save_tiny

WORDS = ["[UNK]"] + [f"w{i}" for i in range(COMMON["vocab_size"] - 1)]
TEXT = "w3 w17 w5 w90 unseen w42"


def save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over the checkpoint's whole vocabulary, saved as transformers does."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = save_tiny("qwen3", tmp_path_factory.mktemp("hf") / "qwen3-tiny")
    save_tokenizer(folder)
    return folder


def test_text_modality_uses_the_checkpoints_tokenizer_on_its_rows(checkpoint):
    import transformers

    from vlac.runtime.hf.load import load_pretrained
    from vlac.runtime.model import build_model
    from vlac.runtime.tokenizers.text import text_tokenizer

    exp = experiment(checkpoint)
    assert Path(exp.modalities["text"].path) == checkpoint.resolve()
    ours = text_tokenizer(exp.modalities["text"], ()).encode(TEXT)
    theirs = transformers.AutoTokenizer.from_pretrained(checkpoint)(TEXT)["input_ids"]
    assert ours == theirs and 0 in ours  # the unknown word too
    model = build_model(exp)
    load_pretrained(model, exp)
    reference = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    offset = exp.vocab_layout().range_of("text").offset
    with torch.no_grad():
        torch.testing.assert_close(model.embed(torch.tensor(ours) + offset), reference.get_input_embeddings()(torch.tensor(theirs)),
                                   atol=0, rtol=0)


def test_a_spec_keeps_its_own_tokenizer_choice(checkpoint, tmp_path):
    bare = save_tiny("qwen3", tmp_path / "no-tokenizer")
    assert experiment(bare).modalities["text"].path is None  # nothing to take: the spec's own BPE
    own = tmp_path / "own"
    save_tokenizer(own)
    exp = experiment(checkpoint, modalities={"text": {"kind": "text", "tokens": 14, "path": str(own)}})
    assert exp.modalities["text"].path == str(own)


def test_from_hf_is_relative_to_the_spec_file(checkpoint, tmp_path):
    import yaml

    import vlac

    spec = experiment(checkpoint).model_dump(mode="json", exclude={"backbone", "modalities", "profiles"})
    spec["backbone"] = {"from_hf": "./" + checkpoint.name, "context_length": 32}
    spec["modalities"] = {"text": {"kind": "text", "tokens": 14}}
    (checkpoint.parent / "spec.yaml").write_text(yaml.safe_dump(spec))
    exp = vlac.load(checkpoint.parent / "spec.yaml")
    assert Path(exp.backbone.init.hf) == checkpoint.resolve()
    assert Path(exp.modalities["text"].path) == checkpoint.resolve()
