"""The emitted train.py is the user's program: it states the plan's layout as literals (what they
say is what runs), writes the loop, evaluation, logging and checkpointing out, stays short, and
an edit to its loop works without touching vlac. Its launch lines are right for the cluster."""

import ast
import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import vlac
from vlac.runtime.program import fp8_gemm_ranges, with_layout

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
ONE_PROCESS = ["cluster.gpus_per_node=1", "parallelism.dp=1"]  # the tiny example planned for one process


@pytest.fixture(scope="module")
def flagship(tmp_path_factory):
    exp = vlac.load(ROOT / "examples" / "vla_10b_moe_h100.yaml")
    return vlac.emit(exp, vlac.plan(exp), tmp_path_factory.mktemp("flagship"))


def test_flagship_train_py_reads_in_one_sitting_and_shows_its_plan(flagship):
    src = (flagship / "train.py").read_text()
    plan = json.loads((flagship / "plan.json").read_text())
    p = plan["plan"]
    assert len(src.splitlines()) < 150
    tree = ast.parse(src)
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
              {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert all(m in ("math", "pathlib") or m.startswith("vlac.runtime") for m in modules), modules
    literals = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Name) and t.id.isupper() and t.id != "HERE"}
    assert literals["MESH"] == {k: p[k] for k in p["mesh_order"]}  # the mesh with its literal sizes
    assert literals["RECOMPUTE"] == p["recompute_per_stage"]
    assert literals["FP8_GEMMS"] == fp8_gemm_ranges(plan) and literals["FP8_GEMMS"]
    assert ("EXPERTS" in literals) == (p["ep"] > 1) and ("STAGES" in literals) == (p["pp"] > 1)
    # the loop, evaluation, logging and checkpointing are code in the file
    for call in ("train_step", "evaluate", "log", "save", "resume", "summary"):
        assert f"trainer.{call}(" in src, call
    # 32 nodes of 8: one torchrun per node, never 256 processes on one
    assert "torchrun --nnodes 32 --nproc-per-node 8" in src and "--nproc-per-node 256" not in src
    assert "torchrun --nnodes 32 --nproc-per-node 8" in (flagship / "README.md").read_text()


def layout_as_train_py_applies_it(program: Path) -> tuple[dict, dict]:
    """(plan.json, the plan train.py's own `with_layout(...)` call makes of it)."""
    src = (program / "train.py").read_text()
    call = re.search(r"plan = (with_layout\(.*?\))\n", src, re.S).group(1)
    namespace = runpy.run_path(str(program / "train.py"))  # defines the literals; runs no training
    plan = json.loads((program / "plan.json").read_text())
    return plan, eval(call, {**namespace, "plan": plan})


def test_layout_literals_are_what_runs(flagship, tmp_path):
    plan, applied = layout_as_train_py_applies_it(flagship)
    assert applied == plan  # the emitted literals reproduce plan.json exactly
    exp = vlac.load(TINY, ["parallelism.dp=1", "parallelism.pp=2", "parallelism.tp=2", "cluster.gpus_per_node=4"])
    piped = vlac.emit(exp, vlac.plan(exp), tmp_path / "pp2")
    plan, applied = layout_as_train_py_applies_it(piped)
    assert set(applied["plan"].pop("tp_plan").values()) <= {"colwise", "rowwise", "sequence_parallel"}  # TP_PLAN
    assert applied == plan and plan["plan"]["pp"] == 2 and "STAGES = [" in (piped / "train.py").read_text()
    plan = json.loads((flagship / "plan.json").read_text())  # an edit to the literals changes what runs
    mesh = {k: plan["plan"][k] for k in plan["plan"]["mesh_order"]}
    pp = plan["plan"]["pp"]
    edited = with_layout(plan, mesh, experts={"ep": plan["plan"]["ep"]}, zero=plan["plan"]["zero"],
                         recompute=["full"] * pp, fp8_gemms={"attn.wq": "2-3"})
    assert edited["plan"]["recompute_per_stage"] == ["full"] * pp
    on = {g["module"] for g in edited["fp8"]["gemms"] if g["fp8"]}
    assert on == {"model.layers.2.attn.wq", "model.layers.3.attn.wq"}
    with pytest.raises(ValueError, match=f"RECOMPUTE lists {pp + 1} policies for {pp} pipeline ranks"):
        with_layout(plan, mesh, recompute=["none"] * pp + ["full"])


def test_a_metric_added_to_the_loop_is_logged_without_touching_vlac(tmp_path):
    exp = vlac.load(TINY, ONE_PROCESS)
    program = vlac.emit(exp, vlac.plan(exp), tmp_path / "p")
    train = program / "train.py"
    src = train.read_text()
    anchor = "            extra = {"
    assert anchor in src
    train.write_text(src.replace(anchor, "            extra = {\"twice_loss\": 2 * met.loss, ", 1))
    result = runpy.run_path(str(train))["main"](max_steps=1)
    assert len(result["losses"]) == 1
    records = [json.loads(line) for line in (program / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if r["event"] == "step")
    assert step["twice_loss"] == pytest.approx(2 * step["loss"])
    kinds = [r["event"] for r in records]
    assert kinds[0] == "start" and "eval" in kinds and kinds[-1] == "summary"  # held-out loss, then the summary
    assert list((program / "run" / "tensorboard").glob("events.out.tfevents.*"))  # TensorBoard by default


def test_python_train_py_on_a_two_process_plan_says_how_to_start_it(tmp_path):
    exp = vlac.load(TINY)
    program = vlac.emit(exp, vlac.plan(exp), tmp_path / "p")
    res = subprocess.run([sys.executable, "train.py"], cwd=program, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "planned for 2 processes" in res.stderr and "torchrun --nproc-per-node 2 train.py" in res.stderr
    assert "Traceback" not in res.stderr
    readme = (program / "README.md").read_text()
    assert "torchrun --nproc-per-node 2 train.py" in readme and "    python train.py" not in readme


def test_readme_figures_have_units_and_a_plain_heading(tmp_path):
    exp = vlac.load(TINY)
    readme = (vlac.emit(exp, vlac.plan(exp), tmp_path / "p") / "README.md").read_text()
    assert readme.startswith("# Training program: `tiny-vla`\n")
    assert "0.000 s" not in readme and "0.0 GB" not in readme
    assert re.search(r"\| predicted step time \| [\d.]+ (us|ms) \|", readme), readme
    assert " MB per GPU" in readme
