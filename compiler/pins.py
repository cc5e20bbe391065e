"""The planner's pins: which keys a plan may fix, their valid values, and why pins that are
legal alone leave no layout (vlac.compiler.planner)."""

from __future__ import annotations

from typing import Any

from .graph import RECOMPUTE
from .search_space import SCHEDULE_CODES, Limits

PIN_KEYS = ("dp", "tp", "pp", "ep", "cp", "zero", "sequence_parallel", "microbatch_size", "schedule",
            "virtual_stages", "recompute", "etp", "reshard_after_forward")


class PlanError(ValueError):
    """Bad pins or a cluster the experiment cannot use at all."""


def check_pin_values(pins: dict[str, Any]) -> None:
    unknown = sorted(set(pins) - set(PIN_KEYS))
    if unknown:
        raise PlanError(f"unknown pin(s) {unknown}; valid pins: {', '.join(PIN_KEYS)}")
    choices = {"schedule": SCHEDULE_CODES, "recompute": RECOMPUTE, "zero": (0, 1, 2, 3),
               "sequence_parallel": (True, False), "reshard_after_forward": (True, False)}
    for key, value in pins.items():
        if key in choices:
            # bools are ints in Python: compare types too, so zero=True or tp=True is refused
            if not any(value == c and type(value) is type(c) for c in choices[key]):
                raise PlanError(f"pin {key}={value!r}: choose one of {', '.join(map(str, choices[key]))}")
        elif type(value) is not int or value < 1:
            raise PlanError(f"pin {key}={value!r}: give a positive integer")


def check_pins_legal(lim: Limits, pins: dict[str, Any]) -> None:
    rules = lim.rules()
    checks = {"tp": lim.tp_ok, "cp": lim.cp_ok, "pp": lim.pp_ok}
    for key, ok in checks.items():
        if key in pins and not ok(pins[key]):
            valid = [d for d in range(1, lim.world + 1) if lim.world % d == 0 and ok(d)]
            raise PlanError(f"no legal layout: pin {key}={pins[key]} breaks the rule \"{rules[key]}\"; "
                            f"valid {key} values on {lim.world} GPUs: {valid}")
    if "ep" in pins and (lim.experts % pins["ep"] or (not lim.moe and pins["ep"] != 1)):
        raise PlanError(f"no legal layout: pin ep={pins['ep']} breaks the rule \"{rules['ep']}\"; valid ep values: "
                        f"{[d for d in range(1, lim.experts + 1) if lim.experts % d == 0]}")


def no_layout_reason(lim: Limits, pins: dict[str, Any]) -> str:
    rules = "; ".join(f"{k}: {v}" for k, v in lim.rules().items())
    return (f"no legal layout of {lim.world} GPUs with pins {pins or '{}'}: each pin is legal alone but they do not "
            f"combine. The rules: {rules}. Relax a pin or change the cluster.")
