"""Reading pieces of the tensors of a local Hugging Face checkpoint without loading whole files.

A checkpoint is `model.safetensors`, or shards listed by `model.safetensors.index.json`
(`weight_map`: tensor name -> file). safetensors maps files into memory and `get_slice(name)[...]`
copies only the requested rows/columns, so a rank that owns a shard of a tensor reads that shard.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"


class CheckpointReader:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.is_file():
            self.files = dict(json.loads(index.read_text())["weight_map"])
        elif (self.folder / SINGLE).is_file():
            with safe_open(self.folder / SINGLE, "pt") as f:
                self.files = {k: SINGLE for k in f.keys()}
        else:
            raise FileNotFoundError(f"backbone.init.hf: neither {SINGLE} nor {INDEX} in {self.folder}; "
                                    f"save the model with save_pretrained(..., safe_serialization=True)")
        self._open: dict[str, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def _handle(self, name: str):
        if name not in self.files:
            raise KeyError(f"backbone.init.hf: tensor {name!r} is missing from the checkpoint in {self.folder}; "
                           f"is it of the family its config.json names?")
        file = self.files[name]
        if file not in self._open:
            self._open[file] = safe_open(self.folder / file, "pt")
        return self._open[file]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def read(self, name: str, region: tuple[slice, ...] | None = None) -> torch.Tensor:
        """The tensor, or only `region` of it (one slice per dimension)."""
        piece = self._handle(name).get_slice(name)
        return piece[region] if region is not None else piece[:]
