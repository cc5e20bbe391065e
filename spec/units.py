"""Quantities written the way people write them: "80GB", "400Gb/s", "10T" tokens, "4h".

Each parser accepts a plain number too (already in base units), so a spec dumped by vlac
(numbers only) loads back to the same values. Parsers raise ValueError with a message that
shows accepted forms; pydantic turns that into a field-named error.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"

_SI = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12, "P": 1e15}
_BIN = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _split(text: str, what: str, examples: str) -> tuple[float, str]:
    m = re.fullmatch(_NUMBER + r"\s*([A-Za-z/%]*)", text.strip())
    if not m:
        raise ValueError(f"cannot read {text!r} as {what}; write e.g. {examples}")
    return float(m.group(1)), m.group(2)


def _scale(prefix: str, text: str, what: str, examples: str) -> float:
    if prefix in _BIN:
        return _BIN[prefix]
    if prefix in _SI:
        return _SI[prefix]
    raise ValueError(f"unknown prefix {prefix!r} in {text!r} for {what}; write e.g. {examples}")


def parse_count(value: object) -> int:
    """Token or step counts: 4096, "4M", "10T", "2.5B", "16Ki"."""
    examples = '4096, "4M", "2.5B", "10T"'
    if isinstance(value, bool):
        raise ValueError(f"expected a count, got {value!r}; write e.g. {examples}")
    if isinstance(value, (int, float)):
        return _whole(float(value), value, examples)
    if isinstance(value, str):
        num, unit = _split(value, "a count", examples)
        return _whole(num * _scale(unit, value, "a count", examples), value, examples)
    raise ValueError(f"expected a count, got {value!r}; write e.g. {examples}")


def _whole(x: float, original: object, examples: str) -> int:
    if x < 0 or abs(x - round(x)) > 1e-6 * max(1.0, abs(x)):
        raise ValueError(f"{original!r} is not a whole non-negative count; write e.g. {examples}")
    return int(round(x))


def parse_bytes(value: object) -> float:
    """Memory sizes in bytes: "80GB" (SI), "80GiB" (binary), or a number of bytes."""
    examples = '"80GB", "141GB", "64GiB"'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        num, unit = _split(value, "a size", examples)
        if not unit.endswith("B") or unit.endswith("b"):
            raise ValueError(f"{value!r} needs a byte unit (B, KB, MB, GB, TB, GiB); write e.g. {examples}")
        return num * _scale(unit[:-1], value, "a size", examples)
    raise ValueError(f"expected a size, got {value!r}; write e.g. {examples}")


def parse_bandwidth(value: object) -> float:
    """Bandwidth in bytes per second: "450GB/s", "400Gb/s" (bits: divided by 8), or a number."""
    examples = '"450GB/s", "400Gb/s", "3.35TB/s"'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        num, unit = _split(value, "a bandwidth", examples)
        if not unit.endswith("/s") or len(unit) < 3 or unit[-3] not in "Bb":
            raise ValueError(f"{value!r} needs a unit like GB/s or Gb/s; write e.g. {examples}")
        bits = unit[-3] == "b"
        scaled = num * _scale(unit[:-3], value, "a bandwidth", examples)
        return scaled / 8 if bits else scaled
    raise ValueError(f"expected a bandwidth, got {value!r}; write e.g. {examples}")


def parse_flops(value: object) -> float:
    """Compute rates in FLOP/s: "989TFLOPS", "989 TFLOP/s", or a number."""
    examples = '"989TFLOPS", "1979 TFLOP/s"'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(_NUMBER + r"\s*([kMGTP]?)FLOP(?:S|/s)", value.strip())
        if not m:
            raise ValueError(f"cannot read {value!r} as a compute rate; write e.g. {examples}")
        return float(m.group(1)) * _SI[m.group(2)]
    raise ValueError(f"expected a compute rate, got {value!r}; write e.g. {examples}")


_DURATION = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> int:
    """Durations in seconds: "4h", "30min", "1d12h", "02:00:00" (Slurm style), or seconds."""
    examples = '"4h", "30min", "1d12h", "02:00:00"'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(:\d{1,2}){1,2}", text):
            parts = [int(p) for p in text.split(":")]
            while len(parts) < 3:
                parts.insert(0, 0)
            return parts[0] * 3600 + parts[1] * 60 + parts[2]
        pieces = re.findall(r"(\d+(?:\.\d+)?)\s*(min|s|m|h|d)", text)
        if pieces and "".join(f"{n}{u}" for n, u in pieces) == text.replace(" ", ""):
            return int(sum(float(n) * _DURATION[u] for n, u in pieces))
    raise ValueError(f"cannot read {value!r} as a duration; write e.g. {examples}")


Count = Annotated[int, BeforeValidator(parse_count)]
Bytes = Annotated[float, BeforeValidator(parse_bytes)]
Bandwidth = Annotated[float, BeforeValidator(parse_bandwidth)]
FlopRate = Annotated[float, BeforeValidator(parse_flops)]
Seconds = Annotated[int, BeforeValidator(parse_duration), PlainSerializer(int)]
