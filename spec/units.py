"""Quantities written the way people write them: "80GB", "400Gb/s", "10T" tokens, "4h".

Each parser accepts a plain number too (already in base units), so a spec dumped by vlac
(numbers only) loads back to the same values. Parsers raise ValueError with a message that
shows accepted forms; pydantic turns that into a field-named error.

Parsing is linear in the text and refuses texts longer than MAX_TEXT characters, non-finite
numbers and counts beyond MAX_COUNT, so no quantity a user writes can hang or overflow a parser.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

from .input_text import describe, short_repr

# one way to match each number (no nested or adjacent digit repetitions): linear, never backtracks
_NUMBER = r"((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
MAX_TEXT = 64  # characters of a written quantity; "1979 TFLOP/s" needs 12
MAX_COUNT = 10**18  # counts stay exact in int64 (tensor sizes, step counters)

_SI = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12, "P": 1e15}
_BIN = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _bounded(text: str, what: str, examples: str) -> str:
    if len(text) > MAX_TEXT:
        raise ValueError(f"{short_repr(text)} is too long for {what} ({len(text)} characters); write e.g. {examples}")
    return text.strip()


def _finite(x: float, original: object, what: str, examples: str) -> float:
    if not math.isfinite(x):
        raise ValueError(f"{short_repr(original)} is not a finite {what.removeprefix('a ')}; write e.g. {examples}")
    return x


def _split(text: str, what: str, examples: str) -> tuple[float, str]:
    m = re.fullmatch(_NUMBER + r"\s*([A-Za-z/%]*)", _bounded(text, what, examples))
    if not m:
        raise ValueError(f"cannot read {short_repr(text)} as {what}; write e.g. {examples}")
    return _finite(float(m.group(1)), text, what, examples), m.group(2)


def _number(value: int | float, what: str, examples: str) -> float:
    """A plain number given for a quantity, as a finite float (huge ints become inf and fail)."""
    try:
        x = float(value)
    except OverflowError:
        x = math.inf
    return _finite(x, value, what, examples)


def _scale(prefix: str, text: str, what: str, examples: str) -> float:
    if prefix in _BIN:
        return _BIN[prefix]
    if prefix in _SI:
        return _SI[prefix]
    raise ValueError(f"unknown prefix {prefix!r} in {short_repr(text)} for {what}; write e.g. {examples}")


def parse_count(value: object) -> int:
    """Token or step counts: 4096, "4M", "10T", "2.5B", "16Ki"."""
    examples = '4096, "4M", "2.5B", "10T"'
    if isinstance(value, bool):
        raise ValueError(f"expected a count, got {describe(value)}; write e.g. {examples}")
    if isinstance(value, int):
        return _whole(value, value, examples)
    if isinstance(value, float):
        return _whole(_number(value, "count", examples), value, examples)
    if isinstance(value, str):
        num, unit = _split(value, "a count", examples)
        return _whole(num * _scale(unit, value, "a count", examples), value, examples)
    raise ValueError(f"expected a count, got {describe(value)}; write e.g. {examples}")


def _whole(x: int | float, original: object, examples: str) -> int:
    if x < 0 or (isinstance(x, float) and abs(x - round(x)) > 1e-6 * max(1.0, abs(x))):
        raise ValueError(f"{short_repr(original)} is not a whole non-negative count; write e.g. {examples}")
    if x > MAX_COUNT:
        raise ValueError(f"{short_repr(original)} is larger than any count vlac handles (at most {MAX_COUNT:.0e}); "
                         f"write e.g. {examples}")
    return int(round(x)) if isinstance(x, float) else x


def parse_bytes(value: object) -> float:
    """Memory sizes in bytes: "80GB" (SI), "80GiB" (binary), or a number of bytes."""
    examples = '"80GB", "141GB", "64GiB"'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _number(value, "size", examples)
    if isinstance(value, str):
        num, unit = _split(value, "a size", examples)
        if not unit.endswith("B") or unit.endswith("b"):
            raise ValueError(f"{short_repr(value)} needs a byte unit (B, KB, MB, GB, TB, GiB); write e.g. {examples}")
        return num * _scale(unit[:-1], value, "a size", examples)
    raise ValueError(f"expected a size, got {describe(value)}; write e.g. {examples}")


def parse_bandwidth(value: object) -> float:
    """Bandwidth in bytes per second: "450GB/s", "400Gb/s" (bits: divided by 8), or a number."""
    examples = '"450GB/s", "400Gb/s", "3.35TB/s"'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _number(value, "bandwidth", examples)
    if isinstance(value, str):
        num, unit = _split(value, "a bandwidth", examples)
        if not unit.endswith("/s") or len(unit) < 3 or unit[-3] not in "Bb":
            raise ValueError(f"{short_repr(value)} needs a unit like GB/s or Gb/s; write e.g. {examples}")
        bits = unit[-3] == "b"
        scaled = num * _scale(unit[:-3], value, "a bandwidth", examples)
        return scaled / 8 if bits else scaled
    raise ValueError(f"expected a bandwidth, got {describe(value)}; write e.g. {examples}")


def parse_flops(value: object) -> float:
    """Compute rates in FLOP/s: "989TFLOPS", "989 TFLOP/s", or a number."""
    examples = '"989TFLOPS", "1979 TFLOP/s"'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _number(value, "compute rate", examples)
    if isinstance(value, str):
        m = re.fullmatch(_NUMBER + r"\s*([kMGTP]?)FLOP(?:S|/s)", _bounded(value, "a compute rate", examples))
        if not m:
            raise ValueError(f"cannot read {short_repr(value)} as a compute rate; write e.g. {examples}")
        return _finite(float(m.group(1)), value, "compute rate", examples) * _SI[m.group(2)]
    raise ValueError(f"expected a compute rate, got {describe(value)}; write e.g. {examples}")


_DURATION = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> int:
    """Durations in seconds: "4h", "30min", "1d12h", "02:00:00" (Slurm style), or seconds."""
    examples = '"4h", "30min", "1d12h", "02:00:00"'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _whole_seconds(_number(value, "duration", examples), value)
    if isinstance(value, str):
        text = _bounded(value, "a duration", examples)
        if re.fullmatch(r"\d+(:\d{1,2}){1,2}", text):
            parts = [int(p) for p in text.split(":")]
            while len(parts) < 3:
                parts.insert(0, 0)
            return parts[0] * 3600 + parts[1] * 60 + parts[2]
        pieces = re.findall(r"(\d+(?:\.\d+)?)\s*(min|s|m|h|d)", text)
        if pieces and "".join(f"{n}{u}" for n, u in pieces) == text.replace(" ", ""):
            return _whole_seconds(sum(Fraction(n) * _DURATION[u] for n, u in pieces), value)
    raise ValueError(f"cannot read {describe(value)} as a duration; write e.g. {examples}")


def _whole_seconds(seconds: float | Fraction, value: object) -> int:
    """Durations are whole seconds: a fraction is refused, not cut (90.7 read as 90, or "0.5s" as
    0, would shorten a time limit or a timeout without a word)."""
    if seconds != int(seconds):
        up = math.ceil(seconds)
        raise ValueError(f"{short_repr(value)} is {float(seconds):g} seconds; a duration is a whole number of seconds: "
                         f"write {up} (or e.g. \"{up}s\")")
    return int(seconds)


Count = Annotated[int, BeforeValidator(parse_count)]
Bytes = Annotated[float, BeforeValidator(parse_bytes)]
Bandwidth = Annotated[float, BeforeValidator(parse_bandwidth)]
FlopRate = Annotated[float, BeforeValidator(parse_flops)]
Seconds = Annotated[int, BeforeValidator(parse_duration), PlainSerializer(int)]
