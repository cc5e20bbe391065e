"""The emitted train.py reads in one sitting: short, only vlac.runtime calls, no plan figures
inlined (they stay in plan.json), and its README documents how to verify and run it."""

import ast
from pathlib import Path

import vlac

ROOT = Path(__file__).resolve().parents[2]


def test_flagship_train_py_is_short_and_calls_the_runtime(tmp_path):
    exp = vlac.load(ROOT / "examples" / "vla_10b_moe_h100.yaml")
    program = vlac.emit(exp, vlac.plan(exp), tmp_path / "p")
    src = (program / "train.py").read_text()
    code = [line for line in src.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) < 40, len(code)
    tree = ast.parse(src)
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert modules <= {"pathlib", "vlac.runtime", "vlac.runtime.model", "vlac.runtime.optim",
                       "vlac.runtime.parallel", "vlac.runtime.program", "vlac.runtime.trainer"}
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"parallelize", "build_model", "build_optimizer", "Trainer", "load_program"} <= called
    readme = (program / "README.md").read_text()
    assert "vlac verify experiment.yaml" in readme and "requeued (at most 10 times)" in readme
    assert "#SBATCH --signal=USR2@120" in (program / "slurm.sbatch").read_text()
