"""Render a program directory from an experiment and its plan (jinja2, StrictUndefined).

Strings from a spec reach generated code only through the `pyrepr` filter (a Python literal),
shell files only through `shellquote`, and Markdown through `mdtext`; nothing a user writes in a
spec can become code. The same inputs give byte-identical files.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import tempfile
from pathlib import Path
from typing import Any

import jinja2

from vlac.compiler.number_format import data_size, duration
from vlac.compiler.recompute_choice import planned_full_layers, rank_chunks
from vlac.runtime.launch import SIGNAL_LEAD_S
from vlac.runtime.program import fp8_gemm_ranges
from vlac.spec import Experiment, dump

TEMPLATES = ("train.py", "launch.py", "slurm.sbatch", "README.md")


class EmitError(ValueError):
    """A program that cannot be written safely (unsafe Slurm word, path outside the folder, I/O)."""


# A `#SBATCH` line cannot be quoted: its value ends at the newline, and Slurm reads the rest of
# the line itself. Control characters (newline, CR, NUL, ...) would start a new line or be
# misread, so they are refused here even when validation let them through.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_directive(value: Any, field: str) -> str:
    """`value` as text, refused when it could leave its `#SBATCH` line (submitit writes it as is)."""
    text = str(value)
    if _CONTROL.search(text):
        raise EmitError(f"{field} = {text[:40]!r}...: a Slurm directive cannot hold a newline or other control "
                        f"character; write it on one line of printable characters")
    return text


def directive_word(value: Any, field: str) -> str:
    """`value` for a `#SBATCH --x=value` line of the preview script: checked, then shell-quoted."""
    return shlex.quote(check_directive(value, field))


def _pyrepr(value: Any) -> str:
    if not isinstance(value, (str, int, float, bool, type(None))):
        raise TypeError(f"only plain literals reach generated code, got {type(value).__name__}")
    return repr(value)


def _pyliteral(value: Any) -> str:
    """A dict/list/tuple of plain literals as Python source (keys and items checked like pyrepr)."""
    def check(v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                _pyrepr(k)
                check(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                check(x)
        else:
            _pyrepr(v)
    check(value)
    return repr(value)


def _mdcode(value: Any) -> str:
    """A code span: shown as written (no backslashes), one line, no backtick to close it early."""
    return "`" + " ".join(str(value).split()).replace("`", "'") + "`"


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
    env.filters["pyliteral"] = _pyliteral
    env.filters["mdcode"] = _mdcode
    env.filters["duration"] = duration
    env.filters["data_size"] = data_size
    env.filters["shellquote"] = lambda v: shlex.quote(str(v))
    env.filters["directive"] = directive_word
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
    if exp.launcher.kind not in ("local", "slurm"):  # it is written into launch.py's docstring as is
        raise EmitError(f"launcher.kind = {str(exp.launcher.kind)[:40]!r}: choose local or slurm")
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


def launch_shape(world: int, nodes: int, gpus_per_node: int) -> tuple[int, int]:
    """(nodes, processes per node) that start `world` processes on the cluster: one process per
    GPU across the spec's nodes, or all on one machine when the plan uses fewer GPUs than that."""
    if nodes > 1 and world % nodes == 0 and world // nodes <= gpus_per_node:
        return nodes, world // nodes
    return 1, world


def layout_context(exp: Experiment, plan_json: dict[str, Any]) -> dict[str, Any]:
    """The plan's layout as the literals train.py states (only the parts this plan uses)."""
    p = plan_json["plan"]
    zero_what = {1: "optimiser state", 2: "optimiser state and gradients", 3: "parameters, gradients and optimiser state"}
    return {
        "mesh": {k: p[k] for k in p["mesh_order"]}, "tp": p["tp"], "ep": p["ep"], "pp": p["pp"], "zero": p["zero"],
        "zero_what": zero_what.get(p["zero"], ""), "sequence_parallel": bool(p["sequence_parallel"]),
        "experts": {"ep": p["ep"], "etp": p.get("expert_tensor_parallel", 1)},
        "pipeline": {"schedule": p["schedule"], "virtual_stages": p["virtual_stages"],
                     "num_microbatches": p["num_microbatches"], "microbatch_size": p["microbatch_size"]},
        "stages": p["stage_split"], "layers": exp.backbone.layers,
        "recompute": recompute_entries(p), "rank_layers": [sum(map(len, mine)) for mine in rank_chunks(p)],
        "fp8_gemms": fp8_gemm_ranges(plan_json) if p.get("fp8") else {},
        "tp_plan": default_tp_plan(exp, p) if p["tp"] > 1 else {},
        "fp8_recipe": (plan_json.get("fp8", {}).get("recipe") or {}).get("name", ""),
        "log_every": exp.train.log_every, "eval_every": exp.train.eval_every,
        "checkpoint_every": exp.train.checkpoint_every,
        "verify_layouts": ",".join(verify_layouts(exp)),
    }


def recompute_entries(p: dict[str, Any]) -> list[str | dict[str, list[int]]]:
    """RECOMPUTE: per pipeline rank its policy, or {"full": [layers]} where the plan recomputes
    only some of the rank's blocks (the layers by vlac.compiler.recompute_choice's rule)."""
    policies = p.get("recompute_per_stage") or [p["recompute"]] * p["pp"]
    return [policy if layers is None else {"full": layers} for policy, layers in zip(policies, planned_full_layers(p))]


def default_tp_plan(exp: Experiment, p: dict[str, Any]) -> dict[str, str]:
    """TP_PLAN: the runtime's split of the decoder layers' modules for this plan, read off the
    model built on the meta device (no memory, no initialisation)."""
    from vlac.runtime.model import build_model
    from vlac.runtime.parallel.tensor_parallel import default_tp_plan as of_model

    return of_model(build_model(exp, "meta"), bool(p["sequence_parallel"]), p.get("expert_tensor_parallel", 1) > 1)


def verify_layouts(exp: Experiment) -> list[str]:
    """The two-process layouts `vlac verify` can check for this model (the README's command)."""
    layouts = ["dp2", "tp2"]
    if exp.backbone.layers >= 2:
        layouts.append("pp2")
    if exp.moe is not None:
        layouts.append("ep2")
    return layouts


PROGRAM_MARK = "plan.json"  # written last by render: a folder holding it is a vlac program


def program_folder_problem(out: Path) -> str | None:
    """Why a program may not be written to `out`, or None. Allowed: a new folder, an empty one, or
    an earlier program (re-emitting replaces only vlac's own files). Any other folder is refused:
    emitting writes README.md, train.py and others there and would replace the user's files of
    those names. One rule for `vlac emit/submit -o` and vlac.emit()."""
    try:
        out.stat()  # Path.exists() raises on a name too long for the system: say so as a problem
    except (FileNotFoundError, NotADirectoryError):
        return None  # a new folder (or one below a file: creating it says so)
    except OSError as e:
        return f"cannot use the path: {e.strerror or e}; give a shorter or accessible folder path"
    if not out.is_dir():
        return "it is a file, not a folder; give a new folder for the program"
    if out.is_dir() and not (out / PROGRAM_MARK).is_file():
        try:
            present = sorted(p.name for p in out.iterdir())
        except OSError as e:
            return f"cannot read the folder: {e.strerror or e}"
        if present:
            listed = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
            return (f"the folder holds other files ({listed}) and is not a vlac program (no {PROGRAM_MARK}); "
                    f"give a new or empty folder so that nothing there is replaced")
    return None


def render(exp: Experiment, plan_json: dict[str, Any], out_dir: str | Path, version: str) -> Path:
    out = Path(out_dir)
    problem = program_folder_problem(out)
    if problem:
        shown = str(out_dir) or "''"
        raise EmitError(f"out_dir {shown}: {problem}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmitError(f"cannot create the program directory {out}: {e.strerror or e}") from None
    env = _env()
    ctx = {**context(exp, plan_json, version), **layout_context(exp, plan_json)}
    ctx["launch_nodes"], ctx["launch_per_node"] = launch_shape(ctx["world"], ctx["nodes"], ctx["gpus_per_node"])
    files = {name: env.get_template(f"{name}.j2").render(**ctx) for name in TEMPLATES}
    files["experiment.yaml"] = dump(exp)
    plan_text = json.dumps(plan_json, indent=2, sort_keys=True) + "\n"
    for name, text in [*files.items(), (PROGRAM_MARK, plan_text)]:  # plan.json last: it marks a program
        write_atomic(confined(out, name), text)
    return out


def confined(folder: Path, name: str) -> Path:
    """`folder/name`, refused unless it resolves inside `folder` (no `..`, no absolute name)."""
    root = folder.resolve()
    path = (root / name).resolve()
    if path.parent != root and root not in path.parents:
        raise EmitError(f"{name!r} would be written outside the program directory {root}; "
                        f"file names in a program are plain names")
    return path


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so a crash or full disk leaves the old file or the new one, never a
    part: a temporary file in the same directory, fsynced, then renamed over `path`."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as e:
        why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise EmitError(f"cannot write {path}: {why}; nothing was half-written there, "
                        f"fix the folder and emit again") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); platforms that cannot open a directory skip it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
