"""Fill the pretrained vision towers of a vlac model (`modalities.<m>.encoder: {hf: PATH}`) from
their CLIP/SigLIP checkpoints, under whatever layout the plan applied.

Runs where `load_pretrained` runs (a fresh run, after the deferred build has given each rank its
pieces): every tower parameter this rank holds, a plain tensor or a DTensor shard, is filled with
only the region of the checkpoint tensor its piece covers, read by safetensors' slices, so no rank
reads a whole tensor the plan shards. Pipeline stages without the input side hold no tower and
read nothing. Names come from `get_model_state_dict` (`projectors.<m>.tower.<param>`), as the
backbone loader's do.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from vlac.spec import Experiment

from ..batch import tower_modalities
from ..materialize import local_indices
from .load import runs
from .reader import CheckpointReader
from .vision import checkpoint_prefix, names


def tower_prefix(name: str) -> str:
    """State-dict prefix of modality `name`'s tower in the model (runtime/encoders.TowerProjector)."""
    return f"projectors.{name}.tower."


@torch.no_grad()
def load_vision_towers(model: nn.Module, exp: Experiment) -> dict[str, Any]:
    """Copy each tower's checkpoint into the tower parameters `model` holds on this rank; returns,
    per modality, where it came from and how many tensors this rank filled (for the run's log)."""
    state = get_model_state_dict(model)
    out = {}
    for name in tower_modalities(exp):
        enc = exp.modalities[name].encoder
        field = f"modalities.{name}.encoder.hf"
        cfg, family = enc.tower(field)
        reader = CheckpointReader(enc.hf)
        theirs = names(cfg, family, checkpoint_prefix(reader))
        prefix, filled = tower_prefix(name), 0
        for key, t in state.items():
            if not key.startswith(prefix) or not isinstance(t, torch.Tensor):
                continue
            source = theirs[key[len(prefix):]]
            if source not in reader:
                raise ValueError(f"{field}: {enc.hf} lacks {source}, which a {family} tower of its config.json has; "
                                 f"is the checkpoint complete?")
            if reader.shape(source) != tuple(t.shape):
                raise ValueError(f"{field}: {source} has shape {reader.shape(source)} in the checkpoint but "
                                 f"{tuple(t.shape)} in vlac's tower; do config.json and the weights belong together?")
            local, index = local_indices(t)
            for block in itertools.product(*(runs(i) for i in index)):  # one block unless a shard is strided
                where = tuple(slice(at, at + s.stop - s.start) for at, s in block)
                local[where] = reader.read(source, tuple(s for _, s in block)).to(local.dtype)
            filled += 1
        out[name] = {"from": enc.hf, "family": family, "tensors": filled}
    return out
