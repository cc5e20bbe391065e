"""Fill a vlac model, laid out however the plan says, from a local Hugging Face checkpoint.

The model may already be parallelised: parameters are plain tensors (one process, DDP, pipeline
stages holding their own layers) or DTensors (FSDP, tensor/expert parallel). For each parameter
this rank holds, the loader works out which global indices its local piece holds (from the
DTensor's placements) and reads only those from the checkpoint files, so no rank materialises a
tensor that the plan shards. Names come from
`get_model_state_dict`, which strips the wrappers' prefixes and keeps whole-model names on
pipeline stages, as checkpoints do.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from vlac.spec import Experiment
from vlac.spec.pretrained import read_config

from ..materialize import local_indices  # shared with deferred construction (also imported from here)
from .names import Direct, Experts, Source, Vocab, sources
from .reader import CheckpointReader
from .vocab import read_rows, source_rows


def runs(indices: list[int]) -> list[tuple[int, slice]]:
    """(position in `indices`, global slice) of each run of consecutive indices."""
    out, start = [], 0
    for k in range(1, len(indices) + 1):
        if k == len(indices) or indices[k] != indices[k - 1] + 1:
            out.append((start, slice(indices[start], indices[k - 1] + 1)))
            start = k
    return out


def global_shape(reader: CheckpointReader, source: Source, exp: Experiment) -> tuple[int, ...]:
    if isinstance(source, Vocab):
        return exp.vocab_layout().padded, reader.shape(source.name)[1]
    if isinstance(source, Experts):
        rows, cols = reader.shape(source.names[0])
        return len(source.names), cols, rows
    return reader.shape(source.name)


def read_region(reader: CheckpointReader, source: Source, name: str, exp: Experiment, rows_from: list[int],
                region: tuple[slice, ...], stats: dict) -> torch.Tensor:
    """Region of vlac's tensor `name`, read from the checkpoint."""
    if isinstance(source, Vocab):
        have = reader.shape(source.name)[0]
        if max(rows_from) >= have:
            raise ValueError(f"backbone.init.hf: {source.name} has {have} rows, fewer than the text vocabulary's "
                             f"{max(rows_from) + 1}; check modalities.<text>.vocab_size against config.json")
        return read_rows(reader, source.name, exp, rows_from, region, stats)
    if isinstance(source, Experts):
        experts, a, b = region  # vlac [E, a, b] <- Hugging Face [b, a] per expert
        return torch.stack([reader.read(source.names[e], (b, a)).t() for e in range(experts.start, experts.stop)])
    return reader.read(source.name, region)


@torch.no_grad()
def load_pretrained(model: nn.Module, exp: Experiment) -> dict[str, Any]:
    """Copy the checkpoint of `exp.backbone.init` into every backbone parameter `model` holds on this
    rank. Returns what was loaded (names, the vocabulary's new rows) for the run's log."""
    init = exp.backbone.init
    if init is None:
        raise ValueError("backbone.init: not set; add init: {hf: PATH} to load a checkpoint")
    cfg = read_config(init.hf)
    reader = CheckpointReader(init.hf)
    want = sources(exp, cfg["model_type"])
    state = get_model_state_dict(model)
    stats: dict = {}
    rows_from = source_rows(exp, cfg)
    loaded = []
    for name, t in state.items():
        source = want.get(name)
        if source is None or not isinstance(t, torch.Tensor):
            continue  # not part of the pretrained backbone (projectors, heads of other losses, buffers)
        expected = global_shape(reader, source, exp)
        if tuple(t.shape) != tuple(expected):
            raise ValueError(f"backbone.init.hf: {name} has shape {tuple(t.shape)} in vlac's model but "
                             f"{tuple(expected)} from the checkpoint; check the backbone fields against config.json")
        local, index = local_indices(t)
        for block in itertools.product(*(runs(i) for i in index)):  # one block unless a shard is strided
            where = tuple(slice(at, at + s.stop - s.start) for at, s in block)
            region = tuple(s for _, s in block)
            local[where] = read_region(reader, source, name, exp, rows_from, region, stats).to(local.dtype)
        loaded.append(name)
    if not loaded:
        raise ValueError("backbone.init.hf: this rank holds no backbone parameter by the checkpoint's names; "
                         "was the model built from this experiment?")
    return {"from": init.hf, "family": cfg["model_type"], "tensors": len(loaded),
            "new_vocab_rows": sum(1 for r in rows_from if r < 0)}
