"""Bad data end to end: an unreadable shard, a corrupt image, a caption longer than seq_len and a
missing key are each a clear error naming the shard and key (data.on_bad_sample: error) or a
counted skip (skip) whose counts `vlac prepare` prints and the training run logs and reports."""

from __future__ import annotations

import json
import runpy
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import vlac
from vlac.cli import app
from vlac.data.samples import _add, _png
from vlac.spec import read_mapping
from vlac.spec.data_sources import anchor_paths

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"
SEQ_LEN = 96
GOOD = 24
runner = CliRunner()

# flaw -> (shard, sample key, what the error names, the skip reason prepare counts)
FLAWS = {
    "corrupt image": ("flawed-001.tar", "000001", "key 'png'", "undecodable"),
    "missing key": ("flawed-002.tar", "000002", "missing key 'txt'", "missing key"),
    "too long": ("flawed-003.tar", "000003", "exceed train.seq_len 96", "too long"),
    "unreadable shard": ("flawed-004.tar", "", "unreadable shard", "unreadable"),
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """flawed-000.tar: GOOD good samples; 001-003: one good and one flawed sample each; 004: not a tar."""
    folder = tmp_path_factory.mktemp("flawed")
    rng = np.random.default_rng(0)

    def good(tar, key):
        _add(tar, f"{key}.png", _png(rng.random((8, 8))))
        _add(tar, f"{key}.txt", f"sample {key}".encode())

    with tarfile.open(folder / "flawed-000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(GOOD):
            good(tar, f"g{i:05d}")
    for flaw, (shard, key, _, _) in list(FLAWS.items())[:3]:
        with tarfile.open(folder / shard, "w", format=tarfile.USTAR_FORMAT) as tar:
            good(tar, "000000")
            png = _png(rng.random((8, 8)))
            _add(tar, f"{key}.png", png[:20] + b"\0" * 30 if flaw == "corrupt image" else png)
            if flaw != "missing key":
                _add(tar, f"{key}.txt", ("far too long " * 20 if flaw == "too long" else "fine").encode())
    (folder / "flawed-004.tar").write_bytes(b"this is not a tar archive " * 40)
    return folder


def _spec(folder: Path, pattern: str, on_bad_sample: str) -> Path:
    spec = read_mapping(TINY)
    spec["backbone"]["context_length"] = 2 * SEQ_LEN
    spec["train"] = {**spec["train"], "seq_len": SEQ_LEN, "global_batch_tokens": 4 * SEQ_LEN, "steps": 2,
                     "checkpoint_every": 2}
    spec["parallelism"] = {**spec["parallelism"], "microbatch_size": 2}
    spec["data"] = {"prepared": "prepared", "on_bad_sample": on_bad_sample, "mixture": [
        {"name": "captions", "weight": 1.0, "modalities": ["image", "text"],
         "source": {"kind": "webdataset", "pattern": pattern, "fields": {"image": "png", "text": "txt"}}}]}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize("flaw", list(FLAWS))
def test_on_bad_sample_error_names_the_shard_and_key(shards, tmp_path, flaw):
    shard, key, says, _ = FLAWS[flaw]
    spec = _spec(tmp_path, str(shards / f"flawed-{{000,{shard[7:10]}}}.tar"), "error")
    res = runner.invoke(app, ["prepare", str(spec), "-j", "1"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert f"{shards / shard}:{key}" in text if key else str(shards / shard) in text
    assert says in text and "data.on_bad_sample" in text and "Traceback" not in text


def test_skipped_samples_are_counted_by_prepare_and_reported_by_training(shards, tmp_path, capfd):
    spec = _spec(tmp_path / "project", str(shards / "flawed-{000..004}.tar"), "skip")
    res = runner.invoke(app, ["prepare", str(spec), "-j", "2"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "project" / "prepared" / "captions" / "manifest.json").read_text())
    assert manifest["skipped"] == {reason: 1 for _, _, _, reason in FLAWS.values()}
    assert manifest["documents"] == GOOD + 3
    assert "skipped 4 samples" in " ".join(res.output.split())

    exp = anchor_paths(vlac.load(spec, ["cluster.gpus_per_node=1", "parallelism.dp=1"]), spec.parent)
    program = vlac.emit(exp, vlac.plan(exp), tmp_path / "program")
    result = runpy.run_path(str(program / "train.py"))["main"](max_steps=2)
    assert len(result["losses"]) == 2
    records = [json.loads(line) for line in (program / "run" / "metrics.jsonl").read_text().splitlines()]
    data = [r for r in records if r["event"] == "data"]
    assert len(data) == 1  # once per run
    assert data[0]["skipped_in_prepare"] == {"captions": manifest["skipped"]} and data[0]["skipped_total"] == 4
    assert 0 < data[0]["packing_efficiency"] <= 1
    assert any(r["event"] == "eval" for r in records)  # evaluated on the held-out documents
    err = " ".join(capfd.readouterr().err.split())
    assert "skipped samples 4 (captions: 1 missing key, 1 too long, 1 undecodable, 1 unreadable)" in err
