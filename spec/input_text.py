"""How user input is quoted in spec error messages: one line, clipped, named by its kind."""

from __future__ import annotations

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
