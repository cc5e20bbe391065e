"""The expected error of a predicted step time, from the leave-one-out table that
`benchmarks/fidelity.py --loo --write-band` writes next to this module (fidelity_band.json):
the median and worst |error| of cited published runs predicted by constants chosen without them,
per regime (software stack, precision, dense/MoE) and overall. docs/fidelity.md says which runs and stacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BAND_FILE = Path(__file__).with_name("fidelity_band.json")
MIN_RUNS = 3  # a regime with fewer cited runs says little: the overall band stands instead


def load_bands(path: Path = BAND_FILE) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def regime_keys(fp8: bool, moe: bool) -> tuple[str, str]:
    return ("precision: FP8" if fp8 else "precision: BF16", "model: MoE" if moe else "model: dense")


def error_band(fp8: bool, moe: bool, bands: dict[str, Any] | None = None, stack: str | None = None) -> str:
    """One line: the band of the plan's stack when at least MIN_RUNS cited runs used it; else
    the wider of its precision and dense/MoE regimes (saying the stack has no band of its own),
    or the overall band when fewer than MIN_RUNS cited runs share either."""
    bands = load_bands() if bands is None else bands
    if not bands:
        return "unknown (no leave-one-out table: run benchmarks/fidelity.py --loo --write-band)"
    groups = bands["groups"]
    # a stack with enough cited runs is the closest regime (the stacks differ most: docs/fidelity.md);
    # otherwise the wider of the precision and dense/MoE regimes, saying the stack has no band
    own = groups.get(f"stack: {stack}", {"runs": 0}) if stack else {"runs": 0}
    keys = (f"stack: {stack}",) if own["runs"] >= MIN_RUNS else regime_keys(fp8, moe)
    found = [(k, groups[k]) for k in keys if k in groups and groups[k]["runs"] >= MIN_RUNS]
    caveat = ""
    if stack and own["runs"] < MIN_RUNS:
        caveat = f"; fewer than {MIN_RUNS} cited runs on the {stack} stack, so its error may be larger"
    if not found:
        k, g = "all", groups["all"]
        where = f"fewer than {MIN_RUNS} cited runs share this regime; over all"
    else:
        k, g = max(found, key=lambda kg: (kg[1]["max"], kg[0]))
        where = k
    return (f"±{g['median'] * 100:.0f} % median, ±{g['max'] * 100:.0f} % worst (leave-one-out over {g['runs']} "
            f"published runs from {len(bands['stacks'])} stacks, {where}{caveat}; docs/fidelity.md)")
