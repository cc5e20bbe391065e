"""Reading specs: YAML / TOML / JSON files, Python modules, mappings; overrides and profiles."""

from __future__ import annotations

import copy
import json
import runpy
import tomllib
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import ValidationError

from .errors import Issue, SpecError, from_validation_error
from .experiment import Experiment

SUFFIXES = (".yaml", ".yml", ".toml", ".json", ".py")


def read_mapping(path: str | Path) -> dict[str, Any]:
    """The raw mapping in a spec file, before validation."""
    p = Path(path)
    src = str(p)
    if not p.is_file():
        raise SpecError([Issue("", f"no spec file at {src}; give a path to a {'/'.join(SUFFIXES)} file")], src)
    suffix = p.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(p.read_text())
        elif suffix == ".toml":
            data = tomllib.loads(p.read_text())
        elif suffix == ".json":
            data = json.loads(p.read_text())
        elif suffix == ".py":
            data = _from_python(p)
        else:
            raise SpecError([Issue("", f"unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")], src)
    except SpecError:
        raise
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise SpecError([Issue("", f"cannot parse the file: {_one_line(e)}; fix the syntax there")], src) from None
    if not isinstance(data, dict):
        raise SpecError([Issue("", f"the spec must be a mapping at the top level, got {type(data).__name__}")], src)
    return data


def _from_python(p: Path) -> dict[str, Any]:
    try:
        ns = runpy.run_path(str(p))
    except Exception as e:  # a user's module failing to import is a spec error, not a crash
        raise SpecError([Issue("", f"running the module failed: {type(e).__name__}: {e}")], str(p)) from None
    if "experiment" not in ns:
        raise SpecError([Issue("", "a Python spec must define `experiment` (an Experiment or a dict)")], str(p))
    obj = ns["experiment"]
    if isinstance(obj, Experiment):
        return obj.model_dump(mode="json")
    if isinstance(obj, Mapping):
        return dict(obj)
    raise SpecError([Issue("experiment", f"expected an Experiment or a dict, got {type(obj).__name__}")], str(p))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=VALUE` -> (["a","b","c"], value). VALUE is read as YAML, so 2 is an int, true a
    bool, [1, 2] a list and "4M" stays a string for the unit parsers."""
    if "=" not in text:
        raise SpecError([Issue("", f"override {text!r} is not KEY=VALUE; write e.g. backbone.layers=4")])
    key, raw = text.split("=", 1)
    parts = [k for k in key.strip().split(".") if k]
    if not parts:
        raise SpecError([Issue("", f"override {text!r} has an empty key; write e.g. backbone.layers=4")])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def deep_merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, k in enumerate(parts[:-1]):
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            elif not isinstance(nxt, dict):
                where = ".".join(parts[: i + 1])
                raise SpecError([Issue(where, f"is a {type(nxt).__name__}, not a section; cannot set {'.'.join(parts)}")])
            node = nxt
        node[parts[-1]] = value
    return out


def resolve_mapping(source: str | Path | Mapping[str, Any] | Experiment, overrides: Iterable[str] = (),
                    profile: str | None = None) -> tuple[dict[str, Any], str]:
    """The raw mapping a spec stands for after its profile and overrides, and a name for its
    source (for error messages); not yet validated."""
    if isinstance(source, Experiment):
        data, name = source.model_dump(mode="json"), "<experiment>"
    elif isinstance(source, Mapping):
        data, name = copy.deepcopy(dict(source)), "<mapping>"
    else:
        data, name = read_mapping(source), str(source)
    if profile:
        profiles = data.get("profiles") or {}
        if profile not in profiles:
            raise SpecError([Issue("profiles", f"no profile {profile!r}; this spec defines {sorted(profiles) or 'none'}")], name)
        data = deep_merge(data, profiles[profile])
    return apply_overrides(data, overrides), name


def load(source: str | Path | Mapping[str, Any] | Experiment, overrides: Iterable[str] = (),
         profile: str | None = None) -> Experiment:
    """Load and validate an experiment. Raises SpecError listing every problem at once."""
    data, name = resolve_mapping(source, overrides, profile)
    try:
        return Experiment.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e, Experiment, data, name) from None


def dump(exp: Experiment) -> str:
    """YAML text of an experiment with every default filled in; load(dump(x)) == x."""
    return yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=100)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
