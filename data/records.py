"""Raw samples of a source: which input units (tar shards, tables, episodes) it has, and each unit's
records (modality -> raw value: text as str, images as [H, W] grayscale in [0, 1], signals as float
arrays). A record that cannot be read carries the reason instead of its fields, so the caller
decides between an error and a counted skip (`data.on_bad_sample`).
"""

from __future__ import annotations

import glob
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np


class SourceError(ValueError):
    """A source that cannot be used at all; the message names the spec field."""


@dataclass(frozen=True)
class Unit:
    """One input unit, tokenized into one output shard."""
    component: int
    stem: str  # output shard name
    label: str  # what messages name: a file, or a file and episode
    paths: tuple[str, ...]
    episode: int = -1


@dataclass
class Record:
    key: str  # names the sample in messages: "shard-0001.tar:000042"
    fields: dict[str, Any] | None = None
    problem: str | None = None  # why it cannot be read (then fields is None)
    reason: str = ""  # the problem's kind, counted by prepare: unreadable, missing key, undecodable


def expand(pattern: str) -> list[str]:
    """Files matching a brace ({000..009}, {a,b}) and glob (*, ?) pattern, sorted, deduplicated."""
    from braceexpand import braceexpand

    found = set()
    for part in braceexpand(pattern):
        found.update(p for p in glob.glob(part) if os.path.isfile(p)) if glob.has_magic(part) else (
            found.add(part) if os.path.isfile(part) else None)
    return sorted(found)


def decode(kind: str, value: Any, where: str, base: str = ".") -> Any:
    """A raw field value as what the tokenizers take, by modality kind. Raises ValueError naming
    `where` when the value cannot be decoded."""
    try:
        if kind == "text":
            text = value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value
            if not isinstance(text, str):
                raise ValueError(f"expected text, got {type(value).__name__}")
            return text
        if kind in ("image", "video"):
            return _image(value, base)
        if isinstance(value, (bytes, bytearray)):
            value = np.load(io.BytesIO(value), allow_pickle=False)
        arr = np.asarray(value, dtype=np.float64)
        if arr.size == 0 or not np.isfinite(arr).all():
            raise ValueError("empty or non-finite signal")
        return arr
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    except Exception as e:  # corrupt bytes: every decoder has its own exception types
        raise ValueError(f"{where}: cannot decode as {kind} ({type(e).__name__}: {e})") from None


def _image(value: Any, base: str) -> np.ndarray:
    from PIL import Image

    if isinstance(value, np.ndarray):
        arr = value.astype(np.float32)
        return arr / 255.0 if arr.max() > 1.0 else arr
    if isinstance(value, dict) and "bytes" in value:  # the Hugging Face datasets image struct
        value = value["bytes"] or value.get("path")
    if isinstance(value, str):
        path = value if os.path.isabs(value) else os.path.join(base, value)
        with open(path, "rb") as f:
            value = f.read()
    if not isinstance(value, (bytes, bytearray)):
        raise ValueError(f"expected image bytes or a path, got {type(value).__name__}")
    with Image.open(io.BytesIO(value)) as img:
        img.load()
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def pick(sample: dict[str, Any], key: str) -> Any:
    """A field of a sample: `key` itself, or `json.FIELD` (a field of the json member/column)."""
    if key in sample:
        return sample[key]
    head, _, field = key.partition(".")
    if field and head in sample:
        doc = sample[head]
        doc = json.loads(doc) if isinstance(doc, (bytes, bytearray, str)) else doc
        for part in field.split("."):
            if not isinstance(doc, dict) or part not in doc:
                raise KeyError(key)
            doc = doc[part]
        return doc
    raise KeyError(key)


def units(exp, index: int) -> list[Unit]:
    """The input units of mixture component `index`."""
    from .lerobot import lerobot_units

    comp = exp.data.mixture[index]
    src = comp.source
    where = f"data.mixture[{index}].source"
    if src.kind == "lerobot":
        return lerobot_units(src, index, where)
    files = expand(src.pattern)
    if not files:
        raise SourceError(f"{where}.pattern: no files match {src.pattern!r}; check the path (a relative one is read "
                          f"from the spec file's folder), or use brace ({{000..009}}) and glob (*) patterns")
    if src.kind == "table":
        bad = [f for f in files if not f.endswith((".parquet", ".jsonl"))]
        if bad:
            raise SourceError(f"{where}.pattern: {bad[0]!r} is neither .parquet nor .jsonl; tables are read by extension")
    return [Unit(index, f"{i:05d}", f, (f,)) for i, f in enumerate(files)]


def records(exp, unit: Unit) -> Iterator[Record]:
    src = exp.data.mixture[unit.component].source
    if src.kind == "webdataset":
        yield from _webdataset(exp, unit, src)
    elif src.kind == "table":
        yield from _table(exp, unit, src)
    else:
        from .lerobot import lerobot_records
        yield from lerobot_records(exp, unit, src)


def _fields(exp, comp, sample: dict[str, Any], where: str, base: str) -> Record:
    out = {}
    for name in comp.modalities:
        key = comp.source.fields[name]
        try:
            raw = pick(sample, key)
        except KeyError:
            have = sorted(k for k in sample if not k.startswith("__"))
            return Record(where, problem=f"{where}: missing key {key!r} (for modality {name}); the sample has {have}",
                          reason="missing key")
        try:
            out[name] = decode(exp.modalities[name].kind, raw, f"{where} key {key!r}", base)
        except ValueError as e:
            return Record(where, problem=str(e), reason="undecodable")
    return Record(where, out)


def _webdataset(exp, unit: Unit, src) -> Iterator[Record]:
    import tarfile

    from webdataset.tariterators import group_by_keys, tar_file_iterator

    comp = exp.data.mixture[unit.component]
    path = unit.paths[0]
    try:
        with open(path, "rb") as stream:
            members = ({**m, "__url__": path} for m in tar_file_iterator(stream))
            for sample in group_by_keys(members):
                yield _fields(exp, comp, sample, f"{path}:{sample['__key__']}", os.path.dirname(path))
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        yield Record(path, problem=f"{path}: unreadable shard ({type(e).__name__}: {e})", reason="unreadable")


def _table(exp, unit: Unit, src) -> Iterator[Record]:
    comp = exp.data.mixture[unit.component]
    path = unit.paths[0]
    try:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq
            rows = pq.read_table(path).to_pylist()
        else:
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
    except Exception as e:  # pyarrow and json raise their own types for a damaged file
        yield Record(path, problem=f"{path}: unreadable table ({type(e).__name__}: {e})", reason="unreadable")
        return
    for i, row in enumerate(rows):
        yield _fields(exp, comp, row, f"{path}:row {i}", os.path.dirname(path))
