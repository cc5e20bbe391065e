"""`vlac prepare SPEC` through the CLI: worker processes, a report of tokens per source and modality,
a re-run that skips finished shards, errors that name the field, and relative source paths read
from the spec's folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

import vlac
from vlac.cli import app

runner = CliRunner()


def _write(folder: Path, spec: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))  # the modalities' order is the vocabulary's
    return path


def _prepare(spec: Path, *args: str):
    return runner.invoke(app, ["prepare", str(spec), *args])


def _one_source(data_spec, datasets, prepared: str, name: str) -> dict:
    spec = data_spec(datasets, Path(prepared))
    spec["data"]["mixture"] = [c for c in spec["data"]["mixture"] if c["name"] == name]
    return spec


def test_prepare_cli_reports_tokens_per_source_and_modality_and_redoes_only_an_unfinished_shard(prepared, tmp_path):
    exp, report = prepared  # the session's preparation (2 workers), whose folder the CLI continues
    spec = _write(tmp_path, exp.model_dump(mode="json", exclude_none=True))
    folder = Path(exp.data.prepared) / "digits"
    before = (folder / "00001.bin").read_bytes()
    stamp = (folder / "00000.bin").stat().st_mtime_ns
    (folder / "00001.json").unlink()  # a kill before the .json marks the shard finished
    res = _prepare(spec, "--workers", "2")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    finished = sum(c["shards"] for c in report.components.values())
    assert f"wrote 1 shards, {finished - 1} already finished" in text
    assert (folder / "00001.bin").read_bytes() == before  # same input, same bytes
    assert (folder / "00000.bin").stat().st_mtime_ns == stamp  # a finished shard is not rewritten
    for source in ("digits", "robot", "corpus", "total"):
        assert source in text
    for modality in ("action", "image", "text", "special"):
        assert modality in text
    for c in report.components.values():  # the printed figures are the manifests'
        assert f"{c['tokens']:,}" in text and f"{c['tokens_per_modality']['text']:,}" in text
    again = _prepare(spec, "-j", "2")
    assert f"wrote 0 shards, {finished} already finished" in " ".join(again.output.split()), again.output


def test_relative_source_paths_are_read_from_the_spec_folder_not_the_cwd(data_spec, datasets, tmp_path, monkeypatch):
    home = tmp_path / "project"
    (home / "text").mkdir(parents=True)
    shutil.copy(datasets["jsonl"], home / "text" / "corpus.jsonl")
    spec = _one_source(data_spec, datasets, "prepared", "corpus")  # text only: no VQ to fit
    spec["data"]["mixture"][0]["source"]["pattern"] = "text/*.jsonl"
    path = _write(home, spec)
    monkeypatch.chdir(tmp_path)  # elsewhere: neither text/ nor prepared/ is here
    res = _prepare(path, "-j", "1")
    assert res.exit_code == 0, res.output
    assert [p.name for p in (home / "prepared" / "corpus").glob("*.bin")] == ["00000.bin"]
    assert not (tmp_path / "prepared").exists()
    exp = vlac.load(yaml.safe_load(path.read_text()))  # the Python API keeps paths as written
    assert exp.data.mixture[0].source.pattern == "text/*.jsonl"


def test_prepare_errors_name_the_source_field(data_spec, datasets, tmp_path):
    spec = _one_source(data_spec, datasets, str(tmp_path / "prepared"), "digits")
    spec["data"]["mixture"][0]["source"]["pattern"] = str(tmp_path / "nowhere-{0..3}.tar")
    res = _prepare(_write(tmp_path, spec))
    assert res.exit_code == 2
    assert "data.mixture[0].source.pattern: no files match" in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_prepare_without_raw_sources_says_what_to_add(tmp_path):
    tiny = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"
    res = _prepare(tiny)
    assert res.exit_code == 2 and "nothing to prepare" in res.output and "source:" in res.output


def test_reordered_modalities_make_finished_shards_stale(prepared):
    from vlac.data.prepare import tokenization_digest

    exp, _ = prepared
    spec = exp.model_dump(mode="json", exclude_none=True)
    spec["modalities"] = dict(reversed(spec["modalities"].items()))  # another vocabulary layout
    assert tokenization_digest(vlac.load(spec), 0) != tokenization_digest(exp, 0)


def test_an_unwritable_prepared_folder_is_named(data_spec, datasets, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the prepared folder should be")
    spec = _one_source(data_spec, datasets, str(blocker / "prepared"), "corpus")
    res = _prepare(_write(tmp_path, spec), "-j", "1")
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "data.prepared: cannot write" in text and "blocker" in text and "Traceback" not in text
