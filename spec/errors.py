"""Spec errors a user can act on: every issue names its field path, what is wrong and a fix."""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .input_text import describe, short_repr
from .type_errors import EXPECTED, NO_DEFAULT, expected, fix_for, type_message

# errors a union member reports for a value not of its type (a Literal's too: "auto" | int)
TYPE_KINDS = frozenset(EXPECTED) | {"literal_error"}


MAX_MESSAGE = 2000  # characters of one issue's message; longer ones are cut (inputs can be huge)


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
    for e, union_members in _group_unions(err.errors(include_url=False), root):
        issues += _union_issue(e, union_members, root, data) if union_members else _issues_for(e, tuple(e["loc"]), root, data)
    # stable, de-duplicated order so the same bad spec prints the same message
    seen, unique = set(), []
    for i in issues:
        if (i.path, i.message) not in seen:
            seen.add((i.path, i.message))
            unique.append(i)
    return SpecError(unique, source)


def _group_unions(errors: list[dict], root: type[BaseModel]) -> list[tuple[dict, list[dict]]]:
    """Each error alone, except the failures of a plain union's members (`"auto" | int`): pydantic
    reports one per member, each under its label. When a member got further into the value (a
    list whose item is wrong) only its errors count: the value was meant for it; when none did,
    the value is of no member's type and the members' errors make one issue (first, [members])."""
    at = [_clean_path(root, tuple(e["loc"]))[2] for e in errors]
    groups: dict[tuple, list[int]] = {}
    for i, (e, union_at) in enumerate(zip(errors, at)):
        if union_at is not None:
            groups.setdefault(tuple(e["loc"])[:union_at], []).append(i)
    out: list[tuple[dict, list[dict]]] = []
    done: set[int] = set()
    for i, e in enumerate(errors):
        if i in done:
            continue
        members = groups.get(tuple(e["loc"])[:at[i]], []) if at[i] is not None else []
        deeper = [j for j in members if len(errors[j]["loc"]) > at[j] + 1]
        if deeper:  # the members the value was meant for report on their own
            done.update(members)
            out += [(errors[j], []) for j in deeper]
        elif len(members) > 1 and all(errors[j]["type"] in TYPE_KINDS for j in members):
            done.update(members)
            out.append((e, [errors[j] for j in members]))
        else:
            out.append((e, []))
    return out


def _union_issue(e: dict, members: list[dict], root: type[BaseModel], data: Any) -> list[Issue]:
    """One issue for a value that no member of a union accepts: "expected 'auto' or an integer"."""
    parts, kept, _ = _clean_path(root, tuple(e["loc"]))
    value = e.get("input")
    expects = [expected(m["type"], m.get("ctx")) for m in members]
    # a string member of a union is a pattern ("every:N"), so quoting a number is no fix: others first
    members = sorted(members, key=lambda m: m["type"] == "string_type")
    fixes = [fix_for(m["type"], value, m.get("ctx"), _field_default(root, kept, data)) if value is None
             else fix_for(m["type"], value, m.get("ctx")) for m in members]
    return [Issue(dotted(parts), type_message(expects, value, fixes))]


def _issues_for(e: dict, loc: tuple, root: type[BaseModel], data: Any) -> list[Issue]:
    parts, model_loc, _ = _clean_path(root, loc)
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
    if kind == "missing" and parts and isinstance(parts[-1], int):  # a short fixed-length list (a tuple)
        return [_tuple_length_issue(root, model_loc[:-1], data, e.get("input"))]
    if kind == "too_long" and (e.get("ctx") or {}).get("field_type") == "Tuple":
        return [_tuple_length_issue(root, model_loc, data, e.get("input"))]
    if kind == "missing":
        return [Issue(path, "required field is missing; add it")]
    if kind == "union_tag_invalid":  # the tag as a short repr: a newline in it would split the problem's line
        ctx = e.get("ctx") or {}
        return [Issue(path, f"{short_repr(ctx.get('tag'))} is not a valid {ctx.get('discriminator', 'kind').strip(chr(39))}; "
                            f"choose one of {ctx.get('expected_tags', '')}")]
    if kind in EXPECTED:  # a value of the wrong type (spec models validate strictly: base.SpecModel)
        value, model = e.get("input"), _model_at(root, model_loc, data)
        keys = tuple(model.model_fields) if model is not None else ()
        fix = fix_for(kind, value, e.get("ctx"), _field_default(root, model_loc, data), keys,
                      # {} suits a section whose every field has a default (not a tagged union: it needs a kind)
                      empty_ok=kind == "model_type" and model is not None
                      and not any(f.is_required() for f in model.model_fields.values()))
        return [Issue(path, type_message([expected(kind, e.get("ctx"))], value, [fix]))]
    if kind == "union_tag_not_found":
        return [Issue(path, f"{msg}; add a kind, e.g. kind: text")]
    return [Issue(path, f"{msg} (got {short_repr(e.get('input'))})")]


def _tuple_length_issue(root: type[BaseModel], loc: tuple, data: Any, value: Any) -> Issue:
    """A fixed-length list (a tuple field: optimizer.betas, losses.contrastive.pair) with too few
    or too many values."""
    model = _model_at(root, loc[:-1], data) if loc else None
    field = model.model_fields.get(str(loc[-1])) if model is not None else None
    args = typing.get_args(_strip_annotated(field.annotation)) if field is not None else ()
    default = _field_default(root, loc, data)
    example = f"; write e.g. {short_repr(list(default))}" if isinstance(default, tuple) else ""
    size = f"{len(args)} values" if args and Ellipsis not in args else "more values"
    return Issue(dotted(_clean_path(root, loc)[0]), f"expected a list of {size}, got {describe(value)}{example}")


def _clean_path(root: type[BaseModel], loc: tuple) -> tuple[list[Any], tuple, int | None]:
    """Drop the labels pydantic inserts for union members (the tag of a tagged union, or
    "int" / "literal['auto']" of a plain union) so the path is what the user wrote. Also the
    index in `loc` of the first plain-union label (None without one): the errors of one union's
    members share the `loc` before it."""
    tp: Any = root
    parts: list[Any] = []  # field names (str) and list indices (int)
    kept: list[Any] = []
    union_at = None
    for n, part in enumerate(loc):
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
                union_at = n if union_at is None else union_at
                break
            tp = members[0] if members else Any
            origin = typing.get_origin(tp)
        if label:
            continue
        # past a plain union's label the member is unknown (tp is Any); an int in a loc is a list index
        is_index = isinstance(part, int) and (tp is Any or typing.get_origin(tp) in (list, tuple))
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
    return parts, tuple(kept), union_at


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _fields_at(root: type[BaseModel], loc: tuple, data: Any) -> set[str]:
    """Field names of the model found at `loc` (so a typo inside `modalities.cam` lists the
    video tokenizer's fields)."""
    model = _model_at(root, loc, data)
    return set(model.model_fields) if model is not None else set()


def _field_default(root: type[BaseModel], loc: tuple, data: Any) -> Any:
    """The default of the model field `loc` names (NO_DEFAULT when it is required, or names a
    list item or a mapping's value)."""
    model = _model_at(root, loc[:-1], data) if loc else None
    field = model.model_fields.get(str(loc[-1])) if model is not None else None
    if field is None or field.is_required():
        return NO_DEFAULT
    return field.get_default(call_default_factory=True)


def _model_at(root: type[BaseModel], loc: tuple, data: Any) -> type[BaseModel] | None:
    """The model found at `loc`, following the user's data through dicts and tagged unions."""
    tp: Any = root
    node = data
    for part in loc:
        tp = _unwrap(tp, node)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
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
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


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
