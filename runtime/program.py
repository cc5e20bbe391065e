"""What an emitted program directory holds, and how a process reads it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlac.spec import Experiment, load

EXPERIMENT_FILE = "experiment.yaml"
PLAN_FILE = "plan.json"


def load_program(program_dir: str | Path) -> tuple[Experiment, dict[str, Any]]:
    d = Path(program_dir)
    exp = load(d / EXPERIMENT_FILE)
    plan = json.loads((d / PLAN_FILE).read_text())
    if plan.get("experiment") != exp.name:
        raise ValueError(f"{d / PLAN_FILE} was planned for {plan.get('experiment')!r}, not {exp.name!r}; re-run vlac emit")
    return exp, plan
