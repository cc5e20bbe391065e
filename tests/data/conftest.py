"""Small real datasets built once per session in a temporary folder (digits as WebDataset shards,
scripted CartPole episodes in LeRobot format, a text corpus), the tiny VLA spec that reads them,
and their prepared token shards."""

from __future__ import annotations

from pathlib import Path

import pytest

import vlac
from vlac.spec import read_mapping
from vlac.data.samples import write_cartpole_lerobot, write_digits_webdataset, write_text_corpus

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
SEQ_LEN = 96  # room for two or more documents per row


@pytest.fixture(scope="session")
def datasets(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("datasets")
    jsonl, parquet = write_text_corpus(tmp / "text")
    return {"digits": write_digits_webdataset(tmp / "wds"), "robot": str(write_cartpole_lerobot(tmp / "robot")),
            "jsonl": jsonl, "parquet": parquet, "root": str(tmp)}


def spec_data(datasets: dict[str, str], prepared: Path, **data) -> dict:
    """The tiny VLA trained on the three sources (a mapping for vlac.load)."""
    spec = read_mapping(TINY)
    spec["backbone"]["context_length"] = 2 * SEQ_LEN
    spec["train"] = {**spec["train"], "seq_len": SEQ_LEN, "global_batch_tokens": 8 * SEQ_LEN, "steps": 8,
                     "checkpoint_every": 4}
    spec["parallelism"] = {**spec["parallelism"], "microbatch_size": 4}
    spec["data"] = {"prepared": str(prepared), **data, "mixture": [
        {"name": "digits", "weight": 1.0, "modalities": ["image", "text"],
         "source": {"kind": "webdataset", "pattern": datasets["digits"], "fields": {"image": "png", "text": "txt"}}},
        {"name": "robot", "weight": 1.0, "modalities": ["text", "image", "action"],
         "source": {"kind": "lerobot", "root": datasets["robot"],
                    "fields": {"text": "task", "image": "observation.images.top", "action": "action"}}},
        {"name": "corpus", "weight": 0.5, "modalities": ["text"],
         "source": {"kind": "table", "pattern": datasets["jsonl"], "fields": {"text": "text"}}}]}
    return spec


@pytest.fixture(scope="session")
def data_spec():
    """spec_data, for test modules (conftest is not importable from them)."""
    return spec_data


@pytest.fixture(scope="session")
def prepared(datasets, tmp_path_factory):
    """(experiment, prepare report) of the three sources, prepared once."""
    from vlac.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared")
    exp = vlac.load(spec_data(datasets, out))
    return exp, prepare(exp, workers=2)
