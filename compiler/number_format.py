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
