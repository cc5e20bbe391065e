"""Reading a Hugging Face checkpoint's config.json for the spec: the file found and parsed, its
model_type one vlac reads, the keys vlac needs present. Each failure is one PretrainedError
naming the spec field, what is wrong and the fix. Used for decoder checkpoints
(spec/pretrained.py) and CLIP/SigLIP vision towers (spec/modalities.py); no torch, no pydantic."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

CONFIG_FILE = "config.json"


class PretrainedError(ValueError):
    """A checkpoint folder that cannot be read or a family vlac cannot express."""


@dataclass(frozen=True)
class CheckpointKind:
    """What a spec field expects a checkpoint folder to hold, in the words its errors use."""

    model_types: tuple[str, ...]  # config.json model_type values vlac reads
    saved_by: str  # follows "written by transformers' save_pretrained"
    refusal: str  # "model_type X in FILE is not <refusal>"
    choice: str  # "; choose <choice>"


def read_hf_config(folder: Path, field: str, kind: CheckpointKind, shown: str | Path | None = None) -> tuple[dict[str, Any], Path]:
    """The parsed config.json in `folder` and its path, its model_type checked against `kind`.
    Messages name the folder as `shown` (default `folder`): the spec's own spelling of it."""
    cfg_file = folder / CONFIG_FILE
    if not cfg_file.is_file():
        raise PretrainedError(f"{field}: no {CONFIG_FILE} in {folder if shown is None else shown}; point it at a "
                              f"folder written by transformers' save_pretrained{kind.saved_by}")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise PretrainedError(f"{field}: {cfg_file} is not valid JSON ({e.msg} at line {e.lineno})") from None
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if model_type not in kind.model_types:
        raise PretrainedError(f"{field}: model_type {model_type!r} in {cfg_file} is not {kind.refusal}; "
                              f"choose {kind.choice}")
    return cfg, cfg_file


def require_keys(section: dict[str, Any], keys: Iterable[str | tuple[str, ...]], field: str, cfg_file: Path,
                 whose: str) -> None:
    """Refuse a config `section` that lacks any of `keys` (a tuple is names of which any one will
    do, named by its first); `whose` follows the missing keys in the message (e.g. " of its
    vision config")."""
    missing = [k[0] if isinstance(k, tuple) else k for k in keys
               if not any(name in section for name in (k if isinstance(k, tuple) else (k,)))]
    if missing:
        raise PretrainedError(f"{field}: {cfg_file} lacks {', '.join(missing)}{whose}; is the file complete?")
