"""Figures for people: one SI-prefix formatter shared by the compiler's reports and vlac's.

The reports differ only in taste (how many digits, a space before the unit or not, how a number
below 1000 prints), so those are parameters and every report formats through the same code.
"""

from __future__ import annotations

SI_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def si(x: float, unit: str = "", *, scaled: str = ".2f", small: str = ".0f", sep: str = " ") -> str:
    """`x` with the largest SI prefix (k, M, G, T, P) not above |x|: `si(2.5e9, "FLOP")` is
    "2.50 GFLOP". `scaled` is the format spec of the mantissa when a prefix applies, `small` that
    of a number below 1000 (no prefix), `sep` what goes between the number and the prefix or unit
    (nothing follows a number below 1000 without a unit)."""
    for factor, prefix in SI_PREFIXES:
        if abs(x) >= factor:
            return f"{x / factor:{scaled}}{sep}{prefix}{unit}"
    number = f"{x:{small}}"
    return f"{number}{sep}{unit}" if unit else number


# One unit convention everywhere (terminal tables, SVG pictures, HTML report, emitted README):
# decimal SI prefixes, 1 kB = 1e3 bytes, 1 GB = 1e9 bytes (never KiB/MiB/GiB).
UNIT_CONVENTION = "GB = 10^9 bytes"


def data_size(x: float) -> str:
    """Bytes with a decimal prefix: 3.21 GB, 512 kB, 12 B."""
    return si(x, "B", small=".0f")


def duration(seconds: float) -> str:
    """Seconds with a unit that keeps three significant digits: 1.25 s, 3.40 ms, 870 us."""
    for factor, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if abs(seconds) >= factor:
            return f"{seconds / factor:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns" if seconds else "0 s"
