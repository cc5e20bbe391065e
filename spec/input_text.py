"""How user input is quoted in spec error messages: one line, clipped, named by its kind, with
YAML's words (`true`, `null`) since that is what the user wrote."""

from __future__ import annotations

import datetime
import math
import reprlib
from typing import Any


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def value_problem(e: ValueError) -> str:
    text = one_line(e)
    if "integer string conversion" in text:
        return "a number has more than 4,300 digits; no spec value needs that many"
    return text[:200]


def clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_name(value: Any) -> str:
    return {"int": "number", "float": "number", "str": "string", "NoneType": "null"}.get(
        type(value).__name__, type(value).__name__)


class _YamlRepr(reprlib.Repr):
    """reprlib's bounded repr with YAML's words for booleans and null."""

    def repr_bool(self, x: bool, level: int) -> str:
        return "true" if x else "false"

    def repr_NoneType(self, x: None, level: int) -> str:  # noqa: N802 (reprlib dispatches on the type's name)
        return "null"


_REPR = _YamlRepr()
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


# what YAML (or JSON, TOML) read a value as, in the words of the spec's docs
_KINDS = {bool: "a boolean", int: "an integer", float: "a decimal number", str: "a string", list: "a list",
          tuple: "a list", dict: "a mapping"}


def describe(value: Any) -> str:
    """A value as written and what it was read as, for "expected X, got Y" messages:
    `true (a boolean)`, `'4' (a string)`, `4.0 (a decimal number)`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, datetime.date):  # YAML reads an unquoted 2024-01-01 as a date
        return f"{value.isoformat()} (a date)"
    text = short_repr(value)
    if text.startswith("an integer of about"):
        return text
    kind = next((name for t, name in _KINDS.items() if type(value) is t), f"a value of type {type(value).__name__}")
    return f"{text} ({kind})"
