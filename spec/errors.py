"""Spec errors a user can act on: every issue names its field path, what is wrong and a fix."""

from __future__ import annotations

import difflib
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError


MAX_MESSAGE = 2000  # characters of one issue's message; longer ones are cut (inputs can be huge)

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = 40, 40, 3


def short_repr(value: Any) -> str:
    """A bounded repr for error messages: a few items and levels of a container, the start of a
    long string, the size of a huge integer. Never walks a whole input (an expanded YAML alias
    bomb is exponentially large; Python refuses to print a 4,300-digit integer)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        return _REPR.repr(value)
    except (ValueError, RecursionError):  # e.g. a huge int inside a container
        return f"a {type(value).__name__}"


def dotted(parts: typing.Sequence[Any]) -> str:
    """Field path as a user writes it: `data.mixture[0].modalities` (list indices in brackets)."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True)
class Issue:
    path: str  # field path, e.g. "backbone.kv_heads" or "data.mixture[0].name" ("" = the whole spec)
    message: str
    origin: str = ""  # what wrote the value, when it is not the spec file: e.g. "--set backbone.layers=x"

    def __str__(self) -> str:
        # an issue of the whole file (syntax, encoding, size) is named by the header's file name
        where = f"{self.origin} ({self.path})" if self.origin and self.path else self.origin or self.path
        message = self.message if len(self.message) <= MAX_MESSAGE else self.message[:MAX_MESSAGE] + " ..."
        return f"{where}: {message}" if where else message


class SpecError(ValueError):
    """Raised for any bad spec: file, syntax, unknown keys, bad values, cross-field rules."""

    def __init__(self, issues: list[Issue], source: str = ""):
        self.issues = issues
        self.source = source
        super().__init__("\n".join([_header(issues, source)] + [f"  - {i}" for i in issues]))


def _header(issues: list[Issue], source: str) -> str:
    count = f"{len(issues)} problem{'s' if len(issues) != 1 else ''}"
    if issues and all(i.origin for i in issues):  # only the command line is wrong, not the file
        return f"{count} in the command-line overrides:"
    return f"{count} in {source}:" if source else f"{count}:"


def from_validation_error(err: ValidationError, root: type[BaseModel], data: Any, source: str = "") -> SpecError:
    issues: list[Issue] = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        issues += _issues_for(e, loc, root, data)
    # stable, de-duplicated order so the same bad spec prints the same message
    seen, unique = set(), []
    for i in issues:
        if (i.path, i.message) not in seen:
            seen.add((i.path, i.message))
            unique.append(i)
    return SpecError(unique, source)


def _issues_for(e: dict, loc: tuple, root: type[BaseModel], data: Any) -> list[Issue]:
    parts, model_loc = _clean_path(root, loc)
    path = dotted(parts)
    kind, msg = e["type"], e["msg"]
    if kind == "extra_forbidden":
        key = str(parts[-1])
        valid = sorted(_fields_at(root, model_loc[:-1], data))
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return [Issue(path, f"unknown key; {hint}valid keys here: {', '.join(valid)}")]
    if kind == "value_error":
        text = msg.removeprefix("Value error, ")
        out = []
        for ln in (ln for ln in text.split("\n") if ln.strip()):
            m = re.match(r"^([A-Za-z_][\w.\[\]-]*): (.*)$", ln)
            if m:  # "field: message" names a field below the model that raised it
                sub = m.group(1)
                out.append(Issue(f"{path}{'' if sub.startswith('[') else '.'}{sub}" if path else sub, m.group(2)))
            else:
                out.append(Issue(path, ln))
        return out
    if kind in ("literal_error", "enum"):
        return [Issue(path, f"{short_repr(e.get('input'))} is not a valid choice; {msg.replace('Input should be', 'choose')}")]
    if kind == "missing":
        return [Issue(path, "required field is missing; add it")]
    if kind == "union_tag_invalid":  # the tag as a short repr: a newline in it would split the problem's line
        ctx = e.get("ctx") or {}
        return [Issue(path, f"{short_repr(ctx.get('tag'))} is not a valid {ctx.get('discriminator', 'kind').strip(chr(39))}; "
                            f"choose one of {ctx.get('expected_tags', '')}")]
    if kind == "union_tag_not_found":
        return [Issue(path, f"{msg}; add a kind, e.g. kind: text")]
    return [Issue(path, f"{msg} (got {short_repr(e.get('input'))})")]


def _clean_path(root: type[BaseModel], loc: tuple) -> tuple[list[Any], tuple]:
    """Drop the labels pydantic inserts for union members (the tag of a tagged union, or
    "int" / "literal['auto']" of a plain union) so the path is what the user wrote."""
    tp: Any = root
    parts: list[Any] = []  # field names (str) and list indices (int)
    kept: list[Any] = []
    for part in loc:
        tp = _strip_annotated(tp)
        origin = typing.get_origin(tp)
        label = False
        # an Optional of a tagged union (`X | None` where X is a Union of kinds) nests one union
        # in another: unwrap until the part is a tag, a union label, or the path goes on below
        while origin in (typing.Union, types.UnionType):
            members = [_strip_annotated(a) for a in typing.get_args(tp) if a is not type(None)]
            by_kind = {m.model_fields["kind"].default: m for m in members
                       if isinstance(m, type) and issubclass(m, BaseModel) and "kind" in m.model_fields}
            if part in by_kind:
                tp, label = by_kind[part], True
                break
            if len(members) > 1 and isinstance(part, str):
                tp, label = Any, True
                break
            tp = members[0] if members else Any
            origin = typing.get_origin(tp)
        if label:
            continue
        is_index = isinstance(part, int) and typing.get_origin(tp) in (list, tuple)
        parts.append(part if is_index else str(part))
        kept.append(part)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            f = tp.model_fields.get(str(part))
            tp = f.annotation if f else Any
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        elif origin in (list, tuple):
            args = typing.get_args(tp)
            tp = args[0] if args else Any
        else:
            tp = Any
    return parts, tuple(kept)


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _fields_at(root: type[BaseModel], loc: tuple, data: Any) -> set[str]:
    """Field names of the model found at `loc`, following the user's data through dicts and
    tagged unions (so a typo inside `modalities.cam` lists the video tokenizer's fields)."""
    tp: Any = root
    node = data
    for part in loc:
        tp = _unwrap(tp, node)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return set()
            tp = field.annotation
        else:
            args = typing.get_args(tp)
            tp = args[-1] if args else Any
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    tp = _unwrap(tp, node)
    return set(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else set()


def _unwrap(tp: Any, node: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0], node)
    if origin in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(models) > 1 and isinstance(node, dict):
            for m in models:
                kind = m.model_fields.get("kind")
                if kind is not None and kind.default == node.get("kind"):
                    return m
        if models:
            return models[0]
        non_none = [a for a in typing.get_args(tp) if a is not type(None)]
        return non_none[0] if len(non_none) == 1 else tp
    return tp
