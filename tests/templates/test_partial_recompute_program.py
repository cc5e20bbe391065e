"""A plan with partial full recompute (f<k>), chosen by the planner for vlac's own stack where
memory needs it, emits a train.py that states the layers in RECOMPUTE and runs them: it trains,
checkpointing exactly those blocks."""

from __future__ import annotations

import ast
import runpy
from pathlib import Path

import numpy as np

import vlac
from vlac.compiler.hardware import Hardware
from vlac.compiler.planner import Search
from vlac.compiler.search_space import COLUMNS, SCHEDULE_CODES, Space
from vlac.runtime.parallel import activation_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
SETS = ["backbone.layers=4", "cluster.gpus_per_node=1", "parallelism.dp=1"]
PINS = {"dp": 1, "tp": 1, "pp": 1, "cp": 1, "ep": 1, "zero": 0, "microbatch_size": 4, "recompute": "full"}


def peak_with(search: Search, k: int) -> float:
    """The pinned layout's predicted peak with full recompute of k blocks."""
    row = dict(dp=1, tp=1, sp=False, cp=1, pp=1, ep=1, etp=1, zero=0, raf=True, mb=4, m=4,
               sched=SCHEDULE_CODES.index("1f1b"), v=1)
    cols = {c: np.array([row[c]], dtype=bool if c in ("sp", "raf") else np.int64) for c in COLUMNS}
    return float(search.model.evaluate(Space(cols, 1), forced=np.array([[2]]), forced_layers=np.array([[k]]),
                                       time_all=True).peak[0])


def test_a_plan_with_partial_recompute_emits_a_program_that_runs_it(tmp_path, monkeypatch):
    exp = vlac.load(TINY, SETS)
    assert exp.stack.resolved().partial_recompute  # vlac's own stack plans f<k>
    g = vlac.lower(exp)
    search = Search(exp, exp.cluster, g)
    # memory between the peaks with 1 and 2 of the 4 blocks recomputed: the planner takes 2
    cap = (peak_with(search, 1) + peak_with(search, 2)) / 2
    monkeypatch.setattr(Hardware, "usable_memory", property(lambda self: cap))
    plan = vlac.plan(exp, graph=g, pin=PINS)
    assert plan.chosen.layout.stage_recompute_layers == (2,)
    assert not plan.to_json()["runtime"]["not_as_timed"]
    program = vlac.emit(exp, plan, tmp_path / "program")

    src = (program / "train.py").read_text()
    tree = ast.parse(src)
    literals = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Name) and t.id == "RECOMPUTE"}
    assert literals["RECOMPUTE"] == [{"full": [0, 1]}]

    wrapped = []
    apply = activation_checkpoint.recompute_blocks

    def recording(blocks, chosen, policy):
        wrapped.append(apply(blocks, chosen, policy))
        return wrapped[-1]
    monkeypatch.setattr(activation_checkpoint, "recompute_blocks", recording)
    result = runpy.run_path(str(program / "train.py"))["main"](max_steps=2)
    assert wrapped == [2]  # the program checkpointed the two blocks RECOMPUTE names, not all four
    assert len(result["losses"]) == 2 and all(np.isfinite(result["losses"]))
