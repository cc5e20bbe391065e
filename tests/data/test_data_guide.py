"""docs/data.md's worked example runs as written: its spec is the one `python -m vlac.data.samples`
writes beside tiny generated data (digit captions as WebDataset shards, CartPole in LeRobot format),
and its four commands train a tokenizer pair, prepare the shards and train on them."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlac.cli import app
from vlac.data.samples import GUIDE_SPEC, write_guide_example

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def _blocks(language: str) -> list[str]:
    """The guide's fenced code blocks of `language` in the worked example's section."""
    section = GUIDE.read_text().split("## A worked example", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def test_the_guide_shows_the_spec_the_samples_write():
    assert _blocks("yaml") == [GUIDE_SPEC]
    assert len(GUIDE_SPEC.strip().splitlines()) <= 20  # the promise: a short spec


@pytest.mark.slow
def test_the_guide_commands_train_on_prepared_shards(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    write_guide_example(tmp_path)
    monkeypatch.chdir(tmp_path)
    commands = [shlex.split(line) for line in _blocks("bash")[0].splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["vlac", "tokenizer"], ["vlac", "tokenizer"], ["vlac", "prepare"], ["vlac", "submit"]]
    runner = CliRunner()
    for command in commands:
        res = runner.invoke(app, command[1:])
        assert res.exit_code == 0, (command, res.output)
    assert (tmp_path / "tokenizers" / "text").is_dir() and (tmp_path / "tokenizers" / "image").is_dir()
    manifests = {c: json.loads((tmp_path / "prepared" / c / "manifest.json").read_text()) for c in ("captions", "robot")}
    assert manifests["captions"]["documents"] == 128 and manifests["robot"]["tokens_per_modality"]["action"] > 0
    records = [json.loads(x) for x in (tmp_path / "runs" / "my-vla" / "run" / "metrics.jsonl").read_text().splitlines()]
    summary = next(r for r in records if r["event"] == "summary")
    assert summary["steps"] == 20 and summary["last_loss"] < summary["first_loss"]
    data = next(r for r in records if r["event"] == "data")
    assert set(data["tokens_per_source"]) == {"captions", "robot"} and 0.5 < data["packing_efficiency"] <= 1
    assert any(r["event"] == "eval" for r in records)
