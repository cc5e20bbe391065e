"""`vlac tokenizer train`: BPE on a tiny corpus and an EMA VQ on scikit-learn's digits (WebDataset
shards), trained through the CLI, loaded back through the spec's `path`, and the EMA codebook's
update and dead-code re-seeding checked directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import vlac
from vlac.cli import app
from vlac.data.tokenizers.ema_vq import EMAQuantizer, train_ema_vq
from vlac.data.tokenizers.saved import TokenizerLoadError
from vlac.runtime.features import fitted_vq
from vlac.runtime.tokenizers.text import BPETokenizer, text_tokenizer
from vlac.spec import read_mapping
from vlac.spec.modalities import ImageVQ

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"

VOCAB = 300


def _spec(datasets: dict, **modalities) -> dict:
    spec = read_mapping(TINY)
    spec["modalities"]["text"] = {**spec["modalities"]["text"], "tokenizer": "bpe", "vocab_size": VOCAB}
    for name, extra in modalities.items():
        spec["modalities"][name] = {**spec["modalities"][name], **extra}
    spec["data"] = {"mixture": [
        {"name": "digits", "weight": 1.0, "modalities": ["image", "text"],
         "source": {"kind": "webdataset", "pattern": datasets["digits"], "fields": {"image": "png", "text": "txt"}}},
        {"name": "corpus", "weight": 0.5, "modalities": ["text"],
         "source": {"kind": "table", "pattern": datasets["jsonl"], "fields": {"text": "text"}}}]}
    return spec


def _write(tmp_path, spec: dict):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def trained(datasets, tmp_path_factory):
    """(folder, CLI output) per modality: text BPE and a 30-step VQ, both trained by the CLI."""
    tmp = tmp_path_factory.mktemp("tokenizers")
    spec = _write(tmp, _spec(datasets))
    runner, out = CliRunner(), {}
    for name, args in (("text", []), ("image", ["--steps", "30", "--batch", "32", "--reseed-every", "10"])):
        result = runner.invoke(app, ["tokenizer", "train", str(spec), "--modality", name, "-o", str(tmp / name), *args])
        assert result.exit_code == 0, result.output
        out[name] = (tmp / name, result.output)
    return out


def test_bpe_trained_by_the_cli_loads_through_path_and_round_trips(datasets, trained):
    folder, output = trained["text"]
    manifest = json.loads((folder / "vlac_tokenizer.json").read_text())
    assert manifest["kind"] == "text" and 256 < manifest["vocab_size"] <= VOCAB
    assert manifest["report"]["by_component"] == {"digits": 128, "corpus": 60}
    exp = vlac.load(_spec(datasets, text={"path": str(folder)}))
    tok = text_tokenizer(exp.modalities["text"], (), "text")
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == manifest["vocab_size"]
    for text in ("a handwritten 7", "the pole stays up", "unseen words, ünïcode ✓ and\ttabs"):
        ids = tok.encode(text)
        assert tok.decode(ids) == text and max(ids) < VOCAB
    assert len(tok.encode("a handwritten 7")) < len("a handwritten 7")  # merges learned from the corpus


def test_a_hugging_face_tokenizer_json_file_loads_as_text_path(datasets, trained):
    file = trained["text"][0] / "tokenizer.json"
    exp = vlac.load(_spec(datasets, text={"path": str(file)}))
    tok = text_tokenizer(exp.modalities["text"], (), "text")
    assert tok.decode(tok.encode("the cart moves left")) == "the cart moves left"


def test_text_vocab_smaller_than_the_tokenizer_is_named(datasets, trained):
    exp = vlac.load(_spec(datasets, text={"path": str(trained["text"][0]), "vocab_size": 257}))
    with pytest.raises(TokenizerLoadError, match=r"modalities\.text\.vocab_size: 257 .* set vocab_size: \d+"):
        text_tokenizer(exp.modalities["text"], (), "text")


def test_vq_trained_on_digits_by_the_cli_loads_through_path(datasets, trained):
    folder, output = trained["image"]
    assert "codebook usage" in output and "perplexity" in output and "reconstruction mse" in output
    manifest = json.loads((folder / "vlac_tokenizer.json").read_text())
    assert manifest["report"]["images"] == 128 and manifest["report"]["steps"] == 30
    exp = vlac.load(_spec(datasets, image={"path": str(folder)}))
    tok, report = fitted_vq(exp, "image", {})
    assert report.usage == manifest["report"]["usage"] > 0.2  # re-seeding keeps codes alive
    m = exp.modalities["image"]
    codes = tok.encode(torch.rand(3, m.channels, m.image_size, m.image_size))
    assert codes.shape == (3, (m.image_size // m.patch_size) ** 2)
    assert int(codes.min()) >= 0 and int(codes.max()) < m.codebook_size


def test_vq_mismatching_the_spec_names_every_field(datasets, trained):
    exp = vlac.load(_spec(datasets, image={"path": str(trained["image"][0]), "image_size": 8, "codebook_size": 128}))
    with pytest.raises(TokenizerLoadError) as info:
        fitted_vq(exp, "image", {})
    message = str(info.value)
    assert "modalities.image.image_size: 8" in message and "set image_size: 16" in message
    assert "modalities.image.codebook_size: 128" in message and "set codebook_size: 64" in message
    assert "patch_size" not in message.split("(or train")[0]


def test_cli_rejects_a_modality_without_a_trainable_tokenizer(datasets, tmp_path):
    spec = _write(tmp_path, _spec(datasets))
    result = CliRunner().invoke(app, ["tokenizer", "train", str(spec), "--modality", "action"])
    assert result.exit_code == 2 and "choose a text, image or video modality" in result.output
    result = CliRunner().invoke(app, ["tokenizer", "train", str(spec), "--modality", "nope"])
    assert result.exit_code == 2 and "['action', 'image', 'text']" in result.output


def test_ema_update_moves_each_used_code_toward_its_vectors():
    q = EMAQuantizer(4, 2, beta=0.25, dead_threshold=1.0, decay=0.5)
    with torch.no_grad():
        q.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]]))
        q.embed_sum.copy_(q.codebook.weight)
    z = torch.tensor([[1.0, 1.0], [1.2, 0.8], [4.0, 4.0]])  # two vectors for code 0, one for code 1
    before = q.codebook.weight.clone()
    q.train()(z)
    after = q.codebook.weight
    assert torch.dist(after[0], z[:2].mean(0)) < torch.dist(before[0], z[:2].mean(0))
    assert torch.dist(after[1], z[2]) < torch.dist(before[1], z[2])
    assert torch.equal(q.usage, torch.tensor([2.0, 1.0, 0.0, 0.0]))


def test_dead_codes_are_reseeded_onto_batch_vectors():
    q = EMAQuantizer(4, 2, beta=0.25, dead_threshold=1.0)
    with torch.no_grad():
        q.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [0.1, 0.0], [100.0, 100.0], [-100.0, 100.0]]))
        q.embed_sum.copy_(q.codebook.weight)
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)) * 0.1
    q.train()(z)
    dead = q.reseed_dead_codes(z, torch.Generator().manual_seed(1))
    assert sorted(dead.tolist()) == [2, 3]
    for code in (2, 3):  # now on a vector of the batch, with its EMA statistics restarted there
        assert (q.codebook.weight[code] == z).all(-1).any()
        assert torch.equal(q.embed_sum[code], q.codebook.weight[code]) and q.cluster_size[code] == 1.0
    assert not q.usage.any()


def test_reseeding_keeps_more_of_the_codebook_in_use():
    from vlac.runtime.datasets.digits import load

    images = np.asarray(load()[0][:256], np.float32)[:, None, :8, :8]
    spec = ImageVQ(image_size=8, channels=1, patch_size=2, codebook_size=64, codebook_dim=4)
    _, off = train_ema_vq(spec, images, steps=20, batch=64, reseed_every=0)
    _, on = train_ema_vq(spec, images, steps=20, batch=64, reseed_every=5)
    assert off["reseeded"] == 0 < on["reseeded"]
    assert on["usage"] > off["usage"]


def test_training_again_writes_byte_identical_folders(datasets, trained, tmp_path):
    spec = _write(tmp_path, _spec(datasets))
    for name, args in (("text", []), ("image", ["--steps", "30", "--batch", "32", "--reseed-every", "10"])):
        result = CliRunner().invoke(app, ["tokenizer", "train", str(spec), "-m", name, "-o", str(tmp_path / name), *args])
        assert result.exit_code == 0, result.output
        first = trained[name][0]
        for file in sorted(p.name for p in first.iterdir()):
            assert (tmp_path / name / file).read_bytes() == (first / file).read_bytes(), file


def test_vq_trains_on_the_frames_of_a_lerobot_dataset(datasets, tmp_path):
    spec = _spec(datasets)
    spec["data"]["mixture"] = [{"name": "robot", "weight": 1.0, "modalities": ["text", "image", "action"], "source": {
        "kind": "lerobot", "root": datasets["robot"],
        "fields": {"text": "task", "image": "observation.images.top", "action": "action"}}}]
    result = CliRunner().invoke(app, ["tokenizer", "train", str(_write(tmp_path, spec)), "-m", "image",
                                      "-o", str(tmp_path / "vq"), "--steps", "4", "--batch", "16"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "vq" / "vlac_tokenizer.json").read_text())["report"]
    assert report["by_component"] == {"robot": 3 * 24} == {"robot": report["images"]}  # every frame of 3 episodes


def test_prepare_tokenizes_with_the_trained_tokenizers_and_redoes_shards_when_one_is_retrained(datasets, trained, tmp_path):
    import shutil

    from vlac.data.prepare import prepare, tokenization_digest
    from vlac.runtime.datasets.digits import load

    text_dir = tmp_path / "text"
    shutil.copytree(trained["text"][0], text_dir)
    spec = _spec(datasets, text={"path": str(text_dir)}, image={"path": str(trained["image"][0])})
    spec["data"] = {**spec["data"], "prepared": str(tmp_path / "prepared"), "mixture": spec["data"]["mixture"][:1]}
    exp = vlac.load(spec)
    report = prepare(exp, workers=1)
    bpe = text_tokenizer(exp.modalities["text"], (), "text")
    captions = [f"a handwritten {int(label)}" for label in load()[1][:128]]
    counts = report.components["digits"]["tokens_per_modality"]
    assert counts["text"] == sum(len(bpe.encode(c)) for c in captions) < sum(len(c) for c in captions)
    before = tokenization_digest(exp, 0)
    (text_dir / "vlac_tokenizer.json").write_text((text_dir / "vlac_tokenizer.json").read_text() + " ")
    assert tokenization_digest(exp, 0) != before


def test_the_cli_prints_a_markup_like_output_folder_as_written(datasets, tmp_path):
    folder = tmp_path / "[/x]bpe"  # rich would read this as a closing tag and crash the report
    spec = _write(tmp_path, _spec(datasets))
    result = CliRunner().invoke(app, ["tokenizer", "train", str(spec), "--modality", "text", "-o", str(folder)])
    assert result.exit_code == 0, result.output
    assert f"wrote {folder}" in result.output.replace("\n", "")
