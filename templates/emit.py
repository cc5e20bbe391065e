"""Render a program directory from an experiment and its plan (jinja2, StrictUndefined).

Strings from a spec reach generated code only through the `pyrepr` filter (a Python literal),
shell files only through `shellquote`, and Markdown through `mdtext`; nothing a user writes in a
spec can become code. The same inputs give byte-identical files.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jinja2

from vlac.runtime.launch import SIGNAL_LEAD_S
from vlac.spec import Experiment, dump

TEMPLATES = ("train.py", "launch.py", "slurm.sbatch", "README.md")


def _pyrepr(value: Any) -> str:
    if not isinstance(value, (str, int, float, bool, type(None))):
        raise TypeError(f"only plain literals reach generated code, got {type(value).__name__}")
    return repr(value)


def _mdtext(value: Any) -> str:
    text = " ".join(str(value).split())  # no newlines: a name cannot start a new Markdown block
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>])", r"\\\1", text)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vlac.templates", "."),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["pyrepr"] = _pyrepr
    env.filters["shellquote"] = lambda v: shlex.quote(str(v))
    env.filters["mdtext"] = _mdtext
    return env


def _slurm_time(seconds: int) -> str:
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


def context(exp: Experiment, plan_json: dict[str, Any], version: str) -> dict[str, Any]:
    p, pred, c = plan_json["plan"], plan_json["predicted"], exp.cluster
    layout = (f"dp{p['dp']} tp{p['tp']} pp{p['pp']} cp{p['cp']} ep{p['ep']} zero{p['zero']} "
              f"recompute={p['recompute']}" + (" fp8" if p["fp8"] else ""))
    world = p["dp"] * p["tp"] * p["pp"] * p["cp"]
    return {
        "vlac_version": version, "experiment_name": exp.name, "job_name": exp.name,
        "layout_summary": layout, "world": world, "nodes": c.nodes, "gpus_per_node": c.gpus_per_node,
        "num_microbatches": p["num_microbatches"], "microbatch_size": p["microbatch_size"],
        "step_time_s": pred["step_time_s"], "mfu": pred["mfu"], "peak_memory_gb": pred["peak_memory_gb"],
        "default_executor": exp.launcher.kind, "partition": exp.launcher.partition,
        "account": exp.launcher.account, "qos": exp.launcher.qos, "time_limit": _slurm_time(exp.launcher.time_limit),
        "keep_last": exp.train.keep_last, "max_requeues": exp.launcher.max_requeues,
        "signal_lead_s": SIGNAL_LEAD_S,  # what vlac.submit asks Slurm for
    }


def render(exp: Experiment, plan_json: dict[str, Any], out_dir: str | Path, version: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = _env()
    ctx = context(exp, plan_json, version)
    files = {name: env.get_template(f"{name}.j2").render(**ctx) for name in TEMPLATES}
    files["experiment.yaml"] = dump(exp)
    files["plan.json"] = json.dumps(plan_json, indent=2, sort_keys=True) + "\n"
    for name, text in files.items():
        (out / name).write_text(text)
    return out
