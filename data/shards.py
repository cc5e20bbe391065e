"""Indexed token shards (Megatron-style: a flat .bin of positions, an .idx of document offsets),
memory-mapped for reading. Format in docs/data.md:

    NAME.bin   every document's positions back to back, 8 bytes each (POSITION, little-endian,
               packed: token int32, modality int8 (-1 = special), span uint16 (id of the non-text
               span within the document, 0 outside), flags uint8 (1 predictable, 2 prompt))
    NAME.idx   b"VLACIDX1", uint64 documents N, then int64 offsets[N+1] (positions),
               int64 extra_offsets[N+1] (float32 values in .ext), uint64 extra_mask[N] (bit k: the
               document has stored extra key k of the experiment's `stored_extras`)
    NAME.ext   the documents' extras (continuous features, span indices, media tokens) as float32
    NAME.json  statistics; written last, so its presence marks a finished shard

Each file is written to NAME.*.partial and renamed, so a killed `vlac prepare` leaves no shard
that looks finished.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

POSITION = np.dtype([("token", "<i4"), ("modality", "i1"), ("span", "<u2"), ("flags", "u1")])
FLAG_PREDICT, FLAG_PREFIX = 1, 2
MAGIC = b"VLACIDX1"
STORED_FIELDS = ("features", "index", "tokens", "pose")  # batch entries kept per document; the rest are derived


def stored_extras(exp) -> list[tuple[str, tuple[int, ...]]]:
    """The per-document batch entries shards keep, in bit order, with their per-sample shapes."""
    from vlac.runtime.data import extra_shapes

    shapes = extra_shapes(exp)
    return [(k, shapes[k][0]) for k in sorted(shapes) if k.rsplit(".", 1)[1] in STORED_FIELDS]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shard(stem: Path, docs: list[tuple[np.ndarray, dict[str, np.ndarray]]], extras_keys: list[str],
                stats: dict) -> None:
    """Write one shard of documents (positions, extras); `stats` goes to the .json, last."""
    lengths = np.array([len(p) for p, _ in docs], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ext_parts, ext_offsets, masks = [], [0], []
    for _, extras in docs:
        mask, size = 0, 0
        for bit, key in enumerate(extras_keys):
            if key in extras:
                mask |= 1 << bit
                ext_parts.append(np.asarray(extras[key], np.float32).reshape(-1))
                size += ext_parts[-1].size
        masks.append(mask)
        ext_offsets.append(ext_offsets[-1] + size)
    body = np.concatenate([p for p, _ in docs]) if docs else np.zeros(0, POSITION)
    _atomic_write(stem.with_suffix(".bin"), body.astype(POSITION).tobytes())
    ext = np.concatenate(ext_parts) if ext_parts else np.zeros(0, np.float32)
    _atomic_write(stem.with_suffix(".ext"), ext.tobytes())
    idx = (MAGIC + np.uint64(len(docs)).tobytes() + offsets.tobytes() + np.array(ext_offsets, np.int64).tobytes()
           + np.array(masks, np.uint64).tobytes())
    _atomic_write(stem.with_suffix(".idx"), idx)
    _atomic_write(stem.with_suffix(".json"), json.dumps(stats, sort_keys=True, indent=1).encode())


@dataclass
class Shard:
    """A finished shard, memory-mapped."""
    path: Path
    offsets: np.ndarray
    ext_offsets: np.ndarray
    masks: np.ndarray
    positions: np.ndarray
    extras: np.ndarray

    @classmethod
    def open(cls, stem: Path) -> "Shard":
        idx = stem.with_suffix(".idx")
        raw = np.memmap(idx, dtype=np.uint8, mode="r")
        if bytes(raw[:8]) != MAGIC:
            raise ValueError(f"{idx}: not a vlac token index (bad magic); re-run `vlac prepare`")
        n = int(np.frombuffer(raw[8:16], np.uint64)[0])
        at = 16
        offsets = np.frombuffer(raw, np.int64, n + 1, at)
        ext_offsets = np.frombuffer(raw, np.int64, n + 1, at + 8 * (n + 1))
        masks = np.frombuffer(raw, np.uint64, n, at + 16 * (n + 1))
        bin_, ext = stem.with_suffix(".bin"), stem.with_suffix(".ext")
        if bin_.stat().st_size != int(offsets[-1]) * POSITION.itemsize:
            raise ValueError(f"{bin_}: {bin_.stat().st_size} bytes, the index needs {int(offsets[-1]) * POSITION.itemsize}; "
                             f"the shard is damaged, delete it and re-run `vlac prepare`")
        positions = np.memmap(bin_, POSITION, "r") if offsets[-1] else np.zeros(0, POSITION)
        extras = np.memmap(ext, np.float32, "r") if ext_offsets[-1] else np.zeros(0, np.float32)
        return cls(stem, offsets, ext_offsets, masks, positions, extras)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def document(self, i: int) -> np.ndarray:
        return self.positions[self.offsets[i]:self.offsets[i + 1]]

    def document_extras(self, i: int, keys: list[tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
        out, at, mask = {}, int(self.ext_offsets[i]), int(self.masks[i])
        for bit, (key, shape) in enumerate(keys):
            if mask >> bit & 1:
                size = int(np.prod(shape))
                out[key] = np.asarray(self.extras[at:at + size]).reshape(shape)
                at += size
        return out


def finished_shards(folder: Path) -> list[Path]:
    """Stems of the finished shards of a component folder, sorted."""
    return sorted(p.with_suffix("") for p in Path(folder).glob("*.json") if p.name != "manifest.json")
