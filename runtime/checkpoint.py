"""Distributed checkpoints with torch.distributed.checkpoint: atomic, keep the last K, resume.

A checkpoint is written into `step_XXXXXXXX.partial` and renamed once every rank has finished,
so a crash mid-save never leaves a checkpoint that looks complete. Model and optimizer state go
through `get_state_dict` / `set_state_dict`, which understand DDP and FSDP2 sharding, so a job
can resume on a different number of ranks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.optim import Optimizer

PREFIX = "step_"


class Checkpointer:
    def __init__(self, folder: Path, keep_last: int, is_main: bool):
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.is_main = is_main

    def latest(self) -> Path | None:
        done = sorted(p for p in self.folder.glob(f"{PREFIX}*") if p.is_dir() and not p.name.endswith(".partial"))
        return done[-1] if done else None

    def save(self, step: int, model: nn.Module, optimizer: Optimizer, extra: dict[str, Any]) -> Path:
        final = self.folder / f"{PREFIX}{step:08d}"
        partial = final.with_name(final.name + ".partial")
        if self.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        _barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(partial))
        _barrier()
        if self.is_main:
            (partial / "extra.json").write_text(json.dumps({**extra, "step": step}, sort_keys=True))
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            for old in sorted(p for p in self.folder.glob(f"{PREFIX}*") if not p.name.endswith(".partial"))[:-self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load(self, path: Path, model: nn.Module, optimizer: Optimizer) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        return json.loads((path / "extra.json").read_text())


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
