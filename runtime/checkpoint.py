"""Distributed checkpoints with torch.distributed.checkpoint: atomic, keep the last K, resume on
any layout.

A checkpoint is written into `step_XXXXXXXX.partial` and renamed once every rank has finished
(and `extra.json` is in it), so a crash mid-save never leaves a checkpoint that looks complete.
Model and optimiser state go through `get_state_dict` / `set_state_dict`: parameters are keyed by
their names in the whole model (pipeline stages and sharded wrappers keep them), DTensor shards
are saved as pieces of the global tensor, and the optimiser state is flattened per parameter
(`state.<name>.exp_avg`). A job can therefore resume on another number of ranks or another layout:
DCP reads each rank's pieces out of whatever was saved.

Tied embeddings (`head.weight` is `embed.weight`) have two names: one process saves the weight
under both and its optimiser state under `embed.weight`; a pipeline saves `embed.weight` from the
first stage and `head.weight` from the last, each with its own copy's optimiser state. A name the
loading layout asks for and the checkpoint lacks is read from its tied name (`_tied_aliases`).

Every finished checkpoint has `manifest.json` (size and sha256 of each of its files), written last
and atomically; `latest()` verifies it, so a truncated or bit-flipped checkpoint is reported by path
and the run resumes from the newest one that verifies, instead of failing inside pickle or resuming
silently with other weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)
from torch.optim import Optimizer

PREFIX = "step_"
PARTIAL = ".partial"
EXTRA = "extra.json"
MANIFEST = "manifest.json"
OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
TIED_NAMES = ("embed.weight", "head.weight")  # backbone.tied_embeddings: one weight, two names


class CorruptCheckpoint(ValueError):
    """A checkpoint whose files do not match its manifest (truncated, changed, missing)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> None:
    """Size and sha256 of every file in `folder`, written atomically (temp, fsync, rename)."""
    entries = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
               for p in _files(folder)}
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps({"files": entries}, indent=1, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)


def verify_manifest(folder: Path) -> None:
    """Raise CorruptCheckpoint naming the checkpoint and the first file that does not match."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpoint(f"checkpoint {folder}: its manifest is missing or unreadable ({e})") from None
    for name, want in sorted(files.items()):
        p = folder / name
        if not p.is_file():
            raise CorruptCheckpoint(f"checkpoint {folder}: {name} is missing")
        size = p.stat().st_size
        if size != want["bytes"]:
            raise CorruptCheckpoint(f"checkpoint {folder}: {name} has {size} bytes, the manifest says "
                                    f"{want['bytes']} (truncated or partly written)")
        if _sha256(p) != want["sha256"]:
            raise CorruptCheckpoint(f"checkpoint {folder}: {name} does not match its sha256 in the manifest "
                                    f"(changed on disk)")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class Checkpointer:
    def __init__(self, folder: Path, keep_last: int, is_main: bool):
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.is_main = is_main

    def complete(self) -> list[Path]:
        """Finished checkpoints, oldest first (a `.partial` folder or one without extra.json is not)."""
        found = [p for p in self.folder.glob(f"{PREFIX}*") if p.is_dir() and not p.name.endswith(PARTIAL)
                 and (p / EXTRA).is_file()]
        return sorted(found)

    def latest(self) -> Path | None:
        """The newest checkpoint that verifies against its manifest; each newer one that does not
        is reported (by path and file) on stderr and skipped."""
        for path in reversed(self.complete()):
            try:
                verify_manifest(path)
                return path
            except CorruptCheckpoint as e:
                if self.is_main:
                    print(f"vlac: {e}; skipping it and resuming from an older checkpoint", file=sys.stderr,
                          flush=True)
        return None

    def save(self, step: int, model: nn.Module, optimizer: Optimizer, extra: dict[str, Any]) -> Path:
        final = self.folder / f"{PREFIX}{step:08d}"
        partial = final.with_name(final.name + PARTIAL)
        if self.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        _barrier()
        model_sd, optim_sd = _get_states(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(partial))
        _barrier()
        if self.is_main:
            (partial / EXTRA).write_text(json.dumps({**extra, "step": step}, sort_keys=True))
            write_manifest(partial)  # last: it vouches for every other file
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            for old in self.complete()[:-self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load(self, path: Path, model: nn.Module, optimizer: Optimizer) -> dict[str, Any]:
        verify_manifest(path)
        model_sd, optim_sd = _get_states(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        aliases = _tied_aliases(state, path)
        for part, key, saved in aliases:
            state[part][saved] = state[part].pop(key)
        dcp.load(state, checkpoint_id=str(path))
        for part, key, saved in aliases:
            state[part][key] = state[part].pop(saved)
        if _updates_nothing(optimizer):
            set_model_state_dict(model, state["model"], options=OPTIONS)
        else:
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                           options=OPTIONS)
        return json.loads((path / EXTRA).read_text())


def _updates_nothing(optimizer: Optimizer) -> bool:
    """A pipeline rank holding only frozen stages has an optimiser without parameters (optim.py)."""
    return not any(group["params"] for group in optimizer.param_groups)


def _get_states(model: nn.Module, optimizer: Optimizer) -> tuple[dict, dict]:
    if _updates_nothing(optimizer):  # torch's get_state_dict refuses an empty optimiser state
        return get_model_state_dict(model, options=OPTIONS), {}
    return get_state_dict(model, optimizer, options=OPTIONS)


def _tied_aliases(state: dict[str, dict[str, Any]], path: Path) -> list[tuple[str, str, str]]:
    """(part, requested key, saved key) for each key the checkpoint lacks whose tied name it has."""
    saved = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    out = []
    for part, entries in state.items():
        for key in entries:
            other = _tied_name(key)
            if other and f"{part}.{key}" not in saved and f"{part}.{other}" in saved and other not in entries:
                out.append((part, key, other))
    return out


def _tied_name(key: str) -> str | None:
    """The key under the other tied name (model `head.weight`, optimiser `state.head.weight.exp_avg`,
    `param_groups.head.weight.lr`, ...), or None when the key names neither."""
    a, b = TIED_NAMES
    for prefix in ("", "state.", "param_groups."):
        for name, other in ((a, b), (b, a)):
            head = prefix + name
            if key == head or key.startswith(head + "."):
                return prefix + other + key[len(head):]
    return None
