"""Reading spec files: YAML / TOML / JSON text and Python modules, into a raw mapping."""

from __future__ import annotations

import json
import runpy
import stat
import tomllib
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import Issue, SpecError
from .experiment import Experiment
from .input_bounds import MAX_DEPTH, MAX_FILE_BYTES, as_yaml_values, check_shape, duplicate_key_message, parse_yaml
from .input_text import clip, describe, one_line, value_problem

SUFFIXES = (".yaml", ".yml", ".toml", ".json", ".py")


# what a file read by read_mapping holds, for the messages of an empty or non-mapping file
SPEC_FILE = "a spec is a mapping, e.g. `name: my-run` with `modalities:` and `data:` sections (see examples/)"


def read_mapping(path: str | Path, holds: str = SPEC_FILE) -> dict[str, Any]:
    """The raw mapping in a spec file, before validation. `holds` says what such a file is, in
    the messages of an empty or non-mapping one (a --cluster file and a search space file are
    read here too, and are no specs)."""
    p = Path(path)
    src = str(p)
    not_a_file = _not_a_file(p)
    if not_a_file:
        raise SpecError([Issue("", f"{not_a_file}; give a path to a {'/'.join(SUFFIXES)} file")], src)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise SpecError([Issue("", f"unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")], src)
    data = _from_python(p) if suffix == ".py" else _parse_text(_read_text(p), suffix, src)
    if data is None:
        raise SpecError([Issue("", f"the file is empty; {holds}")], src)
    if not isinstance(data, dict):
        raise SpecError([Issue("", f"the file holds {describe(data)} at the top level; {holds}")], src)
    check_shape(data, src)
    return data


def _not_a_file(p: Path) -> str | None:
    """Why `p` is no file to read, or None. Path.is_file() raises on a name longer than the
    system allows (ENAMETOOLONG) and says only False for a folder or a pipe, where the message
    should say what the path is."""
    try:
        mode = p.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return f"no spec file at {p}"
    except OSError as e:  # a name too long, a symlink loop, no permission on a folder above
        return f"cannot use the path {clip(str(p))}: {e.strerror or e}"
    if stat.S_ISDIR(mode):
        return f"{p} is a folder, not a file"
    if not stat.S_ISREG(mode):
        return f"{p} is not a regular file (a pipe, socket or device)"
    return None


def _read_text(p: Path) -> str:
    src = str(p)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise SpecError([Issue("", f"cannot read the file: {e.strerror or e}")], src) from None
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError([Issue("", f"the file is larger than {MAX_FILE_BYTES // 1024} KiB; a spec is a few KB of "
                                   f"settings (keep data and weights in separate files)")], src)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SpecError([Issue("", f"the file is not UTF-8 text: byte {raw[e.start]:#04x} at line {line} "
                                   f"(offset {e.start}); save it as UTF-8")], src) from None


def _parse_text(text: str, suffix: str, src: str) -> Any:
    try:
        if suffix in (".yaml", ".yml"):
            return parse_yaml(text, src)
        if suffix == ".toml":
            return tomllib.loads(text)
        return json.loads(text, object_pairs_hook=_unique_keys)
    except DuplicateKey as e:
        raise SpecError([Issue("", f"cannot parse the file: {e}; fix it there")], src) from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise SpecError([Issue("", f"cannot parse the file: {one_line(e)}; fix the syntax there")], src) from None
    except RecursionError:
        raise SpecError([Issue("", f"the file nests deeper than {MAX_DEPTH} levels; a spec is a few levels of "
                                   f"sections")], src) from None
    except ValueError as e:  # Python refuses integers of more than 4,300 digits
        raise SpecError([Issue("", f"cannot read a value in the file: {value_problem(e)}")], src) from None


class DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when it names a key twice (json.loads would keep the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(duplicate_key_message(key))
        out[key] = value
    return out


def _from_python(p: Path) -> dict[str, Any]:
    try:
        ns = runpy.run_path(str(p))
    except (Exception, SystemExit) as e:  # a user's module failing to import is a spec error, not a crash
        raise SpecError([Issue("", f"running the module failed: {type(e).__name__}: {one_line(e)[:500]}")],
                        str(p)) from None
    if "experiment" not in ns:
        raise SpecError([Issue("", "a Python spec must define `experiment` (an Experiment or a dict)")], str(p))
    obj = ns["experiment"]
    if isinstance(obj, Experiment):
        return obj.model_dump(mode="json")
    if isinstance(obj, Mapping):
        return as_yaml_values(obj, str(p))
    raise SpecError([Issue("experiment", f"expected an Experiment or a dict, got {type(obj).__name__}")], str(p))
