"""What an emitted program directory holds, how a process reads it back, and the few helpers its
train.py composes: the plan's layout written as literals in train.py (`with_layout`), the
check that the program runs on the processes it was planned for (`check_processes`), and the
compact form of the FP8 GEMM list (`fp8_gemm_ranges`)."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

from vlac.spec import Experiment, load

EXPERIMENT_FILE = "experiment.yaml"
PLAN_FILE = "plan.json"
RUN_DIR = "run"  # metrics.jsonl, tensorboard/ and checkpoints/ of the emitted train.py, beside it
RECOMPUTE_ENTRIES = ("none", "selective", "full")  # vlac.runtime.recompute.RECOMPUTE_POLICIES
LAYER_MODULE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


LAYOUT_KEYS = ("dp", "tp", "pp", "cp")  # the plan's degrees a submission multiplies into its process count


def load_program(program_dir: str | Path) -> tuple[Experiment, dict[str, Any]]:
    """The experiment and plan of a program folder; a ValueError naming the file for a folder that
    is not one (no plan.json, broken JSON, a plan without its layout), never a KeyError later."""
    d = Path(program_dir)
    exp = load(d / EXPERIMENT_FILE)
    plan = _read_plan(d / PLAN_FILE)
    if plan.get("experiment") != exp.name:
        raise ValueError(f"{d / PLAN_FILE} was planned for {plan.get('experiment')!r}, not {exp.name!r}; re-run vlac emit")
    return exp, plan


def _read_plan(path: Path) -> dict[str, Any]:
    redo = "re-emit the program with `vlac emit SPEC -o DIR`"
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no plan in this folder; is it a program written by `vlac emit`? {redo}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the plan ({getattr(e, 'strerror', None) or e}); {redo}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); {redo}") from None
    layout = plan.get("plan") if isinstance(plan, dict) else None
    bad = [k for k in LAYOUT_KEYS if not isinstance(layout, dict) or type(layout.get(k)) is not int or layout[k] < 1]
    if bad:
        raise ValueError(f"{path}: plan.{', plan.'.join(bad)} missing or not a positive integer; {redo}")
    return plan


def check_processes(mesh: dict[str, int], world: int, nodes: int) -> None:
    """Stop (a message on stderr, exit status 2, no traceback) with the command that starts the
    planned processes when `world` differs from the mesh."""
    planned = mesh["pp"] * mesh["dp"] * mesh["cp"] * mesh["tp"]
    if world == planned:
        return
    per_node = planned // nodes if planned % nodes == 0 else planned
    nodes = nodes if planned % nodes == 0 else 1
    launch = (f"torchrun --nproc-per-node {per_node} train.py" if nodes == 1 else
              f"torchrun --nnodes {nodes} --nproc-per-node {per_node} --rdzv-backend c10d "
              f"--rdzv-endpoint HOST:29500 train.py (on each node)")
    print(
        f"error: this program is planned for {planned} processes ({' x '.join(f'{k}{v}' for k, v in mesh.items())}) "
        f"but runs on {world}. Start it with `{launch}` or `python launch.py --executor local`, or re-emit "
        f"for one process: `vlac emit experiment.yaml -o DIR --pin dp=1,tp=1,pp=1,cp=1,ep=1`.", file=sys.stderr)
    raise SystemExit(2)


def fp8_gemm_ranges(plan: dict[str, Any]) -> dict[str, str]:
    """The GEMMs the plan runs in FP8, compactly: module suffix inside a decoder layer -> its
    layers as ranges ("1-22,24"), and modules outside the layers -> "" (e.g. a projector)."""
    layers: dict[str, list[int]] = {}
    for g in plan.get("fp8", {}).get("gemms", []):
        if not g.get("fp8") or not g.get("module"):
            continue
        m = LAYER_MODULE.match(g["module"])
        if m:
            layers.setdefault(m.group(2), []).append(int(m.group(1)))
        else:
            layers.setdefault(g["module"].removeprefix("model."), [])
    return {name: _ranges(sorted(set(ids))) for name, ids in sorted(layers.items())}


def _ranges(ids: list[int]) -> str:
    out, start = [], None
    for i, x in enumerate(ids):
        start = x if start is None else start
        if i + 1 == len(ids) or ids[i + 1] != x + 1:
            out.append(str(x) if x == start else f"{start}-{x}")
            start = None
    return ",".join(out)


def _rank_recompute(rank: int, entry: Any) -> tuple[str, list[int] | None]:
    """One pipeline rank's entry of train.py's RECOMPUTE: a policy on every block of the rank
    ("none", "selective", "full"), or {"full": [decoder layers]}: full recompute of those only."""
    if isinstance(entry, str) and entry in RECOMPUTE_ENTRIES:
        return entry, None
    if isinstance(entry, dict) and list(entry) == ["full"] and isinstance(entry["full"], (list, tuple)) \
            and all(type(i) is int and i >= 0 for i in entry["full"]):
        return "full", sorted(set(entry["full"]))
    raise ValueError(f"train.py RECOMPUTE[{rank}] = {entry!r}: give one of {', '.join(map(repr, RECOMPUTE_ENTRIES))} "
                     f"(on every block of the rank), or {{'full': [decoder layer ids]}} to recompute only those")


def _in_ranges(layer: int, text: str) -> bool:
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        if int(lo) <= layer <= int(hi or lo):
            return True
    return False


def with_layout(plan: dict[str, Any], mesh: dict[str, int], experts: dict[str, int] | None = None,
                zero: int = 0, sequence_parallel: bool = False, pipeline: dict[str, Any] | None = None,
                recompute: list[str | dict[str, list[int]]] | None = None, fp8_gemms: dict[str, str] | None = None,
                tp_plan: dict[str, str] | None = None) -> dict[str, Any]:
    """plan.json with the layout train.py states: what the literals there say is what runs.
    `tp_plan` (TP_PLAN) is checked against the model when the layout is applied
    (runtime/parallel/tensor_parallel.py replicated_regions)."""
    out = copy.deepcopy(plan)
    p = out["plan"]
    p.update({k: int(mesh[k]) for k in ("pp", "dp", "cp", "tp")}, zero=zero, sequence_parallel=sequence_parallel)
    experts = experts or {}
    p["ep"], p["expert_tensor_parallel"] = experts.get("ep", 1), experts.get("etp", 1)
    pipeline = pipeline or {}
    for key in ("schedule", "virtual_stages", "num_microbatches", "microbatch_size", "stage_split"):
        if key in pipeline:
            p[key] = pipeline[key]
    if tp_plan is not None:
        p["tp_plan"] = dict(tp_plan)
    if recompute is not None:
        if len(recompute) != p["pp"]:
            raise ValueError(f"train.py RECOMPUTE lists {len(recompute)} policies for {p['pp']} pipeline ranks")
        from vlac.compiler.recompute_choice import planned_full_layers

        ranks = [_rank_recompute(r, entry) for r, entry in enumerate(recompute)]
        p["recompute_per_stage"] = [policy for policy, _ in ranks]
        p.pop("recompute_full_layers", None)
        layers = [ids for _, ids in ranks]
        if layers != planned_full_layers(p):  # layers other than the plan's (an edit): those run
            p["recompute_full_layers"] = layers
    if fp8_gemms is not None:
        p["fp8"] = out.get("fp8", {})["enabled"] = bool(fp8_gemms) and p.get("fp8", False)
        for g in out.get("fp8", {}).get("gemms", []):
            m = LAYER_MODULE.match(g.get("module") or "")
            name = m.group(2) if m else (g.get("module") or "").removeprefix("model.")
            g["fp8"] = name in fp8_gemms and (m is None or _in_ranges(int(m.group(1)), fp8_gemms[name]))
    return out
