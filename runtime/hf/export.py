"""`vlac export RUN_DIR --hf OUT`: a distributed checkpoint, saved under any layout, as a Hugging
Face checkpoint.

DCP stores every tensor as pieces of the global tensor, whatever the layout that saved it
(runtime/checkpoint.py), so one process reads each global model tensor back and the output does
not depend on the layout: a tp2, pp2 or ep2 checkpoint of the same weights exports to the same
bytes as a single-process one. The backbone goes into `model.safetensors` (or shards plus an
index) under the family's names (names.py, inverted), with vocabulary rows reordered so the text
rows come first (vocab.py); everything else vlac trained (projectors, encoders, contrastive and
flow heads, routers' balancing biases, the training-only multi-token prediction modules, which the
Hugging Face model does not have) goes into `vlac_modules.safetensors` under vlac's names,
except pretrained vision towers (`modalities.<m>.encoder`), each written to `vision_tower/` as the
CLIPVisionModel / SiglipVisionModel checkpoint it came in as.
Tokenizer files of the starting checkpoint are copied; README.md is the model card.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from vlac.spec import Experiment

from ..batch import tower_modalities
from .card import model_card
from .hf_config import config_dtype, family_of, hf_config
from .names import Direct, Experts, Vocab, sources
from .tower_load import tower_prefix
from .vision import write_vision_tower
from .vocab import export_order

COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja", "generation_config.json")
MODULES_FILE = "vlac_modules.safetensors"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODEL_PREFIX = "model."
TIED = ("embed.weight", "head.weight")


def read_model_state(step_dir: Path) -> dict[str, torch.Tensor]:
    """Every model tensor of a DCP checkpoint as a whole (global) tensor, in this one process."""
    meta = dcp.FileSystemReader(str(step_dir)).read_metadata()
    state = {key[len(MODEL_PREFIX):]: torch.empty(tuple(m.size), dtype=m.properties.dtype)
             for key, m in meta.state_dict_metadata.items()
             if key.startswith(MODEL_PREFIX) and isinstance(m, TensorStorageMetadata)}
    dcp.load({"model": state}, checkpoint_id=str(step_dir), no_dist=True)
    a, b = TIED
    for name, other in ((a, b), (b, a)):  # a pipeline saves each tied copy from its own stage
        if name not in state and other in state:
            state[name] = state[other]
    return state


def to_hf(state: dict[str, torch.Tensor], exp: Experiment, family: str
          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(Hugging Face backbone tensors, the rest under vlac's names)."""
    want = sources(exp, family)
    missing = sorted(set(want) - set(state))
    if missing:
        raise ValueError(f"the checkpoint lacks backbone tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}; "
                         f"was it saved by a run of this experiment?")
    order = torch.tensor(export_order(exp))
    hf: dict[str, torch.Tensor] = {}
    for name, source in want.items():
        t = state[name]
        if isinstance(source, Vocab):
            if source.name not in hf:  # tied: head.weight is embed.weight's rows again
                hf[source.name] = t.index_select(0, order)
        elif isinstance(source, Experts):
            hf.update({n: t[e].t() for e, n in enumerate(source.names)})
        else:
            hf[source.name] = t
    rest = {name: t for name, t in state.items() if name not in want}
    return hf, rest


def shard(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Tensors in name order, split greedily into files of at most `max_bytes` (one tensor larger
    than that gets a file of its own)."""
    files: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        n = tensors[name].numel() * tensors[name].element_size()
        if files[-1] and size + n > max_bytes:
            files.append({})
            size = 0
        files[-1][name] = tensors[name]
        size += n
    return files


def write_safetensors(tensors: dict[str, torch.Tensor], out: Path, max_bytes: int) -> list[str]:
    parts = shard(tensors, max_bytes)
    if len(parts) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors" for i in range(len(parts))]
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total},
                 "weight_map": {k: names[i] for i, part in enumerate(parts) for k in sorted(part)}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for name, part in zip(names, parts):
        save_file({k: v.contiguous() for k, v in part.items()}, str(out / name), metadata={"format": "pt"})
    return names


def export(exp: Experiment, step_dir: Path, out: Path, dtype: str | None = None,
           max_shard_bytes: int = 5 * 2**30) -> dict[str, Any]:
    """Write the Hugging Face checkpoint of `step_dir` into `out`; returns what was written."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype: {dtype!r}; choose one of {', '.join(DTYPES)}")
    family = family_of(exp)
    state = read_model_state(step_dir)
    if dtype is not None:
        state = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()}
    hf, rest = to_hf(state, exp, family)
    rest, towers = split_towers(rest, exp)
    cfg_dtype = config_dtype(hf["model.norm.weight"].dtype)
    config = hf_config(exp, cfg_dtype)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    files = write_safetensors(hf, out, max_shard_bytes)
    for name, (folder, tensors) in towers.items():
        cfg, tower_family = exp.modalities[name].encoder.tower(f"modalities.{name}.encoder.hf")
        files += [f"{folder}/{f}" for f in write_vision_tower(tensors, cfg, tower_family, out / folder)]
    if rest:
        save_file({k: v.contiguous() for k, v in sorted(rest.items())}, str(out / MODULES_FILE), metadata={"format": "pt"})
        files.append(MODULES_FILE)
    copied = []
    if exp.backbone.init is not None:
        for name in COPIED_FILES:
            src = Path(exp.backbone.init.hf) / name
            if src.is_file():
                shutil.copyfile(src, out / name)
                copied.append(name)
    step = int(step_dir.name.split("_")[-1]) if step_dir.name.split("_")[-1].isdigit() else None
    folders = {name: folder for name, (folder, _) in towers.items()}
    (out / "README.md").write_text(model_card(exp, family, step, sorted(rest), copied, towers=folders))
    return {"family": family, "files": files, "copied": copied, "vlac_modules": sorted(rest), "vision_towers": folders}


def tower_folder(exp: Experiment, name: str) -> str:
    """Subfolder of the export that holds modality `name`'s vision tower: `vision_tower`, or
    `vision_tower_<name>` when the experiment has several."""
    return "vision_tower" if len(tower_modalities(exp)) == 1 else f"vision_tower_{name}"


def split_towers(rest: dict[str, torch.Tensor], exp: Experiment
                 ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, dict[str, torch.Tensor]]]]:
    """(`rest` without the vision towers, modality -> (its folder, its tower's tensors under the
    tower's own names))."""
    towers = {}
    for name in tower_modalities(exp):
        prefix = tower_prefix(name)
        tensors = {k[len(prefix):]: rest.pop(k) for k in sorted(rest) if k.startswith(prefix)}
        if not tensors:
            raise ValueError(f"the checkpoint lacks the vision tower of modalities.{name}.encoder; "
                             f"was it saved by a run of this experiment?")
        towers[name] = (tower_folder(exp, name), tensors)
    return rest, towers
