"""Reading a Hugging Face checkpoint's config.json for the spec: the file found and parsed, its
model_type one vlac reads, the keys vlac needs present. Each failure is one PretrainedError
naming the spec field, what is wrong and the fix. Used for decoder checkpoints
(spec/pretrained.py) and CLIP/SigLIP vision towers (spec/modalities.py); no torch, no pydantic."""

from __future__ import annotations

import json
import os
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
    if not os.path.isfile(cfg_file):  # never raises: Path.is_file() does on a too-long name
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


@dataclass(frozen=True)
class ConfigValue:
    """What one config.json key must hold for vlac to read it: a whole number or a number in
    [low, high], a flag, a word, a mapping, or a list of words / of whole numbers; null allowed
    where the reader treats null as absent."""

    kind: str  # "int", "number", "bool", "str", "mapping", "strs", "ints"
    low: float = 1
    high: float = 2**31 - 1
    null: bool = False

    def describe(self) -> str:
        bounds = f" from {self.low:g} to {self.high:g}"
        return {"int": "a whole number" + bounds, "number": "a number" + bounds, "bool": "true or false",
                "str": "a string", "mapping": "a mapping ({...})", "strs": "a list of strings",
                "ints": "a list of whole numbers" + bounds}[self.kind] + (" or null" if self.null else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.null
        if self.kind == "ints":
            return isinstance(value, list) and all(_in(v, self, int) for v in value)
        if self.kind == "strs":
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        types = {"int": (int,), "number": (int, float), "bool": (bool,), "str": (str,), "mapping": (dict,)}[self.kind]
        if self.kind in ("int", "number"):
            return _in(value, self, *types)
        return isinstance(value, types)


def _in(value: Any, rule: ConfigValue, *types: type) -> bool:
    # a bool is an int to Python, never a size to a config; NaN and infinities fail the range
    return isinstance(value, types) and not isinstance(value, bool) and rule.low <= value <= rule.high


def check_values(section: Any, rules: dict[str, ConfigValue], field: str, cfg_file: Path, prefix: str = "") -> None:
    """Refuse a config `section` whose keys in `rules` hold a value of the wrong type or size
    (the first one found), so that reading it never fails later with a TypeError."""
    if not isinstance(section, dict):
        raise PretrainedError(f"{field}: {prefix.rstrip('.') or 'the config'} in {cfg_file} is a "
                              f"{type(section).__name__}, not a mapping; is the file a checkpoint's config?")
    for key, rule in rules.items():
        if key in section and not rule.accepts(section[key]):
            shown = repr(section[key])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise PretrainedError(f"{field}: {prefix}{key} = {shown} in {cfg_file} is not {rule.describe()}; "
                                  f"is the file a complete checkpoint config?")
