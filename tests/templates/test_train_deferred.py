"""The emitted train.py builds the model deferred: its weight matrices stay on the meta device
until `parallelize` has laid the model out, and each process then allocates and draws only its
own pieces (runtime/materialize.py), so a model larger than one device still starts. Run here on
one process: the program's own `build()` allocates the weights inside parallelize, with the values
of the eagerly built model (the multi-process layouts: tests/runtime/parallel/
test_materialize_layouts.py and `vlac verify`, which runs this program)."""

import ast
import runpy
from pathlib import Path

import torch

import vlac
from vlac.runtime.distributed import DistEnv
from vlac.runtime.model import build_model
from vlac.runtime.program import load_program

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
ONE_PROCESS = ["cluster.gpus_per_node=1", "parallelism.dp=1"]


def build_model_calls(src: str) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(src))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "build_model"]


def test_train_py_builds_deferred_and_parallelize_draws_the_one_process_values(tmp_path):
    exp = vlac.load(TINY, ONE_PROCESS)
    program = vlac.emit(exp, vlac.plan(exp), tmp_path / "p")
    calls = build_model_calls((program / "train.py").read_text())
    assert len(calls) == 1
    assert {k.arg: ast.literal_eval(k.value) for k in calls[0].keywords} == {"deferred": True}

    exp, plan = load_program(program)
    build = runpy.run_path(str(program / "train.py"))["build"]  # defines the program; trains nothing
    _, layout, optimizer, _ = build(exp, plan, DistEnv(0, 1, 0, torch.device("cpu")))
    reference = dict(build_model(exp).named_parameters())
    weights = [p for p in reference.values() if p.dim() >= 2]
    # allocated by parallelize (after the layout), not by build_model: every weight matrix, once
    assert layout.materialized_bytes == sum(p.numel() * p.element_size() for p in weights)
    got = dict(layout.model.named_parameters())
    assert got.keys() == reference.keys()
    assert not [n for n, p in got.items() if p.is_meta or not torch.equal(p, reference[n])]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in got.values()}
