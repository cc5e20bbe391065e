"""Changing a raw spec before validation: deep merges (profiles) and `--set KEY=VALUE` overrides."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import yaml

from .errors import Issue, SpecError, dotted
from .input_bounds import MAX_DEPTH, DuplicateKeyError, check_shape, parse_yaml
from .input_text import clip, type_name, value_problem


@dataclass(frozen=True)
class Override:
    """One `--set KEY=VALUE`: its text, its key path and how much of that path it created (the
    keys it added are its own, so an unknown key there is the override's problem, not the file's)."""

    text: str
    parts: tuple[str | int, ...]  # ints index lists: data.mixture[0].weight
    created_from: int  # index into parts of the first key that did not exist before

    def owns(self, path: str) -> bool:
        """Whether an issue at `path` comes from this override's value or the keys it added."""
        key = dotted(self.parts)
        if path == key or path.startswith(key + ".") or path.startswith(key + "["):
            return True
        return any(path == dotted(self.parts[: i + 1]) for i in range(self.created_from, len(self.parts)))


_KEY_SEGMENT = re.compile(r"([^\[\]]*)((?:\[[^\[\]]*\])*)")


def _key_parts(key: str, origin: str) -> list[str | int]:
    """`data.mixture[0].weight` -> ["data", "mixture", 0, "weight"]; `data.mixture.0.weight` keeps
    "0" a string, an index once the walk finds a list there (it could name a mapping's key)."""
    parts: list[str | int] = []
    for segment in key.strip().split("."):
        m = _KEY_SEGMENT.fullmatch(segment)
        if m is None:
            raise SpecError([Issue(dotted(parts), f"{clip(segment)!r} is not a key; write a name, optionally "
                                                  f"followed by list indices, e.g. data.mixture[0].weight=2", origin)])
        if m.group(1):
            parts.append(m.group(1))
        for index in re.findall(r"\[([^\]]*)\]", m.group(2)):
            if not index.isdecimal() or len(index) > 9:
                raise SpecError([Issue(dotted(parts), f"[{clip(index, 20)}] is not a list index; use a whole "
                                                      f"number from 0, e.g. data.mixture[0].weight=2", origin)])
            parts.append(int(index))
    return parts


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """`a.b.c=VALUE` -> (["a","b","c"], value); `a.b[1].c=VALUE` -> (["a","b",1,"c"], value).
    VALUE is read as YAML, so 2 is an int, true a bool, [1, 2] a list and "4M" stays a string for
    the unit parsers."""
    origin = f"--set {clip(text)}"
    if "=" not in text:
        raise SpecError([Issue("", f"{clip(text)!r} is not KEY=VALUE; write e.g. backbone.layers=4", origin)])
    key, raw = text.split("=", 1)
    parts = _key_parts(key, origin)
    if not parts or not isinstance(parts[0], str):
        raise SpecError([Issue("", "the key is empty; write e.g. backbone.layers=4", origin)])
    try:
        value = parse_yaml(raw, origin) if raw.strip() else ""
    except DuplicateKeyError as e:
        raise SpecError([Issue(dotted(parts), f"cannot read the value: {e.problem}", origin)]) from None
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise SpecError([Issue(dotted(parts), f"the value nests deeper than {MAX_DEPTH} levels", origin)]) from None
    except ValueError as e:
        raise SpecError([Issue(dotted(parts), f"cannot read the value: {value_problem(e)}", origin)]) from None
    check_shape(value, origin=origin)
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
    return apply_overrides_in_place(copy.deepcopy(data), overrides)[0]


def apply_overrides_in_place(out: dict[str, Any], overrides: Iterable[str]) -> tuple[dict[str, Any], list[Override]]:
    """Apply in place: `out` is the loader's own copy (copying it again cost as much as checking it)."""
    applied: list[Override] = []
    for text in overrides:
        parts, value = parse_override(text)
        applied.append(_set_path(out, parts, value, f"--set {clip(text)}"))
    return out, applied


def _set_path(data: dict[str, Any], parts: list[str | int], value: Any, origin: str) -> Override:
    """Set `value` at `parts` in `data`, creating missing sections; list entries must exist."""
    node: Any = data
    created, walked = len(parts), []
    for i, k in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            k = _list_index(node, k, walked, parts, origin)
        elif isinstance(k, int):
            raise SpecError([Issue(dotted(walked), f"is a section, not a list: it has no entry [{k}]; "
                                                   f"cannot set {dotted(walked + parts[i:])}", origin)])
        walked.append(k)
        if last:
            if isinstance(node, dict) and k not in node:
                created = min(created, i)
            node[k] = value
            break
        nxt = node[k] if isinstance(node, list) else node.get(k)
        if nxt is None and isinstance(node, dict):
            created = min(created, i)
            nxt = node[k] = {}
        elif not isinstance(nxt, (dict, list)):
            raise SpecError([Issue(dotted(walked), f"is a {type_name(nxt)}, not a section or a list; "
                                                   f"cannot set {dotted(walked + parts[i + 1:])}", origin)])
        node = nxt
    return Override(origin.removeprefix("--set "), tuple(walked), created)


def _list_index(items: list, key: str | int, walked: list, parts: list, origin: str) -> int:
    """`key` as an index of the existing entries of `items` (an override changes an entry; adding
    one is writing the whole list: --set 'data.mixture=[...]')."""
    if isinstance(key, str) and not (key.isdecimal() and len(key) <= 9):
        raise SpecError([Issue(dotted(walked), f"is a list; {clip(key, 40)!r} is not an index of it: write "
                                               f"{dotted(walked)}[0] ... [{max(len(items) - 1, 0)}]", origin)])
    index = int(key)
    if index >= len(items):
        valid = f"an index from 0 to {len(items) - 1}" if items else "none: the list is empty"
        raise SpecError([Issue(dotted(walked), f"has {len(items)} entr{'y' if len(items) == 1 else 'ies'}, so "
                                               f"[{index}] does not exist (valid: {valid}); to add entries, set the "
                                               f"whole list, e.g. --set '{dotted(walked)}=[...]'", origin)])
    return index
