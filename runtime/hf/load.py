"""Fill a vlac model, laid out however the plan says, from a local Hugging Face checkpoint.

The model may already be parallelised: parameters are plain tensors (one process, DDP, pipeline
stages holding their own layers) or DTensors (FSDP, tensor/expert parallel). For each parameter
this rank holds, the loader works out which region of the global tensor its local piece is (the
DTensor's placements give the shape and offset) and reads only that region from the checkpoint
files, so no rank materialises a tensor that the plan shards. Names come from
`get_model_state_dict`, which strips the wrappers' prefixes and keeps whole-model names on
pipeline stages, as checkpoints do.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from vlac.spec import Experiment
from vlac.spec.pretrained import read_config

from .names import Direct, Experts, Source, Vocab, sources
from .reader import CheckpointReader
from .vocab import read_rows, source_rows


def local_region(t: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """This rank's piece of `t` and where it sits in the global tensor."""
    if isinstance(t, DTensor):
        shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
        local = t.to_local()
        if tuple(local.shape) != tuple(shape):
            raise RuntimeError(f"a DTensor's local shape {tuple(local.shape)} is not the {tuple(shape)} its placements "
                               f"{t.placements} give; cannot locate its region")
        return local, tuple(slice(o, o + n) for o, n in zip(offset, shape))
    return t, tuple(slice(0, n) for n in t.shape)


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
        local, region = local_region(t)
        local.copy_(read_region(reader, source, name, exp, rows_from, region, stats).to(local.dtype))
        loaded.append(name)
    if not loaded:
        raise ValueError("backbone.init.hf: this rank holds no backbone parameter by the checkpoint's names; "
                         "was the model built from this experiment?")
    return {"from": init.hf, "family": cfg["model_type"], "tensors": len(loaded),
            "new_vocab_rows": sum(1 for r in rows_from if r < 0)}
