"""The held-out evaluation split of prepared data: which documents training never sees.

Rule (docs/data.md): document i of a shard is held out when a 64-bit hash of (component name,
file name of the shard's first input, i) falls below EVAL_FRACTION of the hash range. The hash
depends on neither the seed, the other shards nor the layout, so the split is the same in every
run and process, and adding input files never moves a document from evaluation into training.
A component whose rule holds out nothing holds out its document of smallest hash, so every
component is evaluated; one with a single document cannot be split and is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

EVAL_FRACTION = 1 / 64
SPLITS = ("train", "eval")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit value per input (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def shard_input_name(stem: Path) -> str:
    """The file name a shard was tokenized from (its stem when the shard does not record one)."""
    try:
        inputs = json.loads(stem.with_suffix(".json").read_text()).get("input") or []
    except (OSError, ValueError):
        inputs = []
    return os.path.basename(inputs[0][0]) if inputs else stem.name


def document_hashes(component: str, stem: Path, documents: int) -> np.ndarray:
    """The split hash of each document of one shard."""
    key = hashlib.blake2b(f"{component}/{shard_input_name(stem)}".encode(), digest_size=8).digest()
    base = np.frombuffer(key, np.uint64)[0]
    with np.errstate(over="ignore"):
        return _mix(base ^ (np.arange(documents, dtype=np.uint64) * _GOLDEN))


def held_out(hashes: np.ndarray) -> np.ndarray:
    """Which documents (of one component, all its shards' hashes concatenated) are held out."""
    out = hashes < np.uint64(int(EVAL_FRACTION * 2.0**64))
    if not out.any() and len(hashes) > 1:
        out[int(np.argmin(hashes))] = True
    return out
