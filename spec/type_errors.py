"""Messages for a value of the wrong type: what the field expects, what YAML read, and the edit
that fixes it. The spec validates strictly (base.SpecModel), so `layers: true` or
`attention_sinks: "yes"` are refused here instead of being read as 1 and True."""

from __future__ import annotations

import datetime
import math
import re
from typing import Any

from .input_text import describe, short_repr

# pydantic's error types for a value of the wrong type, and what each field expects in spec words
EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping (name: value pairs)",
    "model_type": "a section (key: value pairs)",
    "model_attributes_type": "a section (key: value pairs)",
}

NO_DEFAULT = object()  # a required field: there is no default to fall back on
_TRUE_WORDS, _FALSE_WORDS = {"true", "yes", "on", "y"}, {"false", "no", "off", "n"}
_INTEGER = re.compile(r"[+-]?[0-9][0-9_]*")


def expected(kind: str, ctx: dict | None) -> str:
    """What a member of a field's type accepts: "an integer", or a Literal's choices ("'auto'")."""
    if kind == "literal_error":
        return str((ctx or {}).get("expected", "one of the listed choices"))
    return EXPECTED[kind]


def type_message(expects: list[str], value: Any, fixes: list[str]) -> str:
    """"expected an integer, got true (a boolean); write ..." (`expects`: one per union member)."""
    # a union's choices as one list: 'auto', 0, 1, 2 or 3 (not "'auto' or 0, 1, 2 or 3")
    atoms = [a for e in expects for a in re.split(r", | or ", e)]
    what = atoms[0] if len(atoms) == 1 else ", ".join(atoms[:-1]) + " or " + atoms[-1]
    fix = next((f for f in fixes if f), "")
    return f"expected {what}, got {describe(value)}" + (f"; {fix}" if fix else "")


def fix_for(kind: str, value: Any, ctx: dict | None, default: Any = NO_DEFAULT, keys: tuple[str, ...] = (),
            empty_ok: bool = True) -> str:
    """The edit that turns `value` into what `kind` accepts ("" when none is specific to it);
    `default` is the field's; `keys` a section's fields, `empty_ok` whether {} is a valid one."""
    if value is None:
        return _unset(default)
    if kind == "int_type":
        return _integer_fix(value, default)
    if kind == "float_type":
        if isinstance(value, str) and _number(value) is not None:
            return f"write {value.strip()} without quotes"
        return f"write a number{_default_hint(default)}"
    if kind == "bool_type":
        return _bool_fix(value)
    if kind == "string_type":
        if isinstance(value, (list, tuple, dict)):
            return "write one string"
        return f'quote it: "{value if isinstance(value, datetime.date) else short_repr(value)}"'
    if kind in ("list_type", "tuple_type"):
        if isinstance(value, (bool, int, float, str)):
            return f"write a list, e.g. [{short_repr(value) if not isinstance(value, str) else value}]"
        return "write a list, e.g. [a, b]"
    if kind in ("model_type", "model_attributes_type"):
        listed = f" ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})" if keys else ""
        return f"write its keys{listed} indented below it" + (", or {} for the defaults" if empty_ok else "")
    if kind == "dict_type":
        return "write name: value pairs indented below it, or {} for none"
    if kind == "literal_error":
        choices = re.split(r", | or ", str((ctx or {}).get("expected", "")))
        if isinstance(value, str) and value.strip() in choices:
            return f"write {value.strip()} without quotes"
    return ""


def _unset(default: Any) -> str:
    if default is NO_DEFAULT:
        return "write a value (this field is required)"
    return f"write a value, or leave the key out for the default ({short_repr(default)})"


def _default_hint(default: Any) -> str:
    return "" if default is NO_DEFAULT or default is None else f" (the default is {short_repr(default)})"


def _number(text: str) -> float | None:
    try:
        x = float(text.replace("_", ""))
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _integer_fix(value: Any, default: Any) -> str:
    whole = f"write a whole number{_default_hint(default)}"
    if isinstance(value, str):
        text = value.strip()
        if _INTEGER.fullmatch(text):
            return f"write {text} without quotes"
        x = _number(text)
        if x is not None and x == int(x) and abs(x) < 1e15:
            return f"write {int(x)} without quotes or decimal point"
        return whole
    if isinstance(value, float) and math.isfinite(value) and abs(value) < 1e15:
        if value == int(value):
            return f"write {int(value)} (no decimal point)"
        return f"write a whole number, e.g. {math.floor(value)} or {math.ceil(value)}"
    return whole


def _bool_fix(value: Any) -> str:
    if isinstance(value, (int, float)) and value in (0, 1):
        return f"write {'true' if value else 'false'}"
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS | _FALSE_WORDS:
            return f"write {'true' if word in _TRUE_WORDS else 'false'} without quotes"
    return "write true or false"
