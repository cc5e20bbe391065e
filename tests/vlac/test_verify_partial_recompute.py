"""`vlac verify`'s equivalence for plans with partial full recompute (f<k>: full recompute of k of
a pipeline rank's blocks, plan.recompute_layers_per_stage): the emitted train.py of each layout,
built by its own `build` (its RECOMPUTE literal, then parallelize), reproduces one process's
losses and gradient norms at 1e-4 relative (gloo, fp32), with different k per pipeline rank,
interleaved virtual stages, zero-bubble and FSDP; and each rank checkpointed exactly the layers
its RECOMPUTE entry names. The layouts run in one spawn of two ranks (tests/process_cases.py)."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest
import torch
from process_cases import spawn_cases

import vlac
from vlac.spec.system import Cluster

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
SETS = ["backbone.layers=8"]
STEPS = 4
MICRO_BATCH = 4
TOLERANCE = 1e-4

# name -> (pins, full-recompute blocks per pipeline rank, the layers each rank's RECOMPUTE names)
LAYOUTS = {
    "pp2+f3/f1": ({"dp": 1, "pp": 2, "schedule": "1f1b"}, [3, 1], [[0, 1, 2], [4]]),
    "pp2+v2+f3/f1": ({"dp": 1, "pp": 2, "schedule": "interleaved_1f1b", "virtual_stages": 2}, [3, 1],
                     [[0, 1, 4], [2]]),
    "pp2+zb+f1/f2": ({"dp": 1, "pp": 2, "schedule": "zero_bubble"}, [1, 2], [[0], [4, 5]]),
    "fsdp2+f2": ({"dp": 2, "pp": 1, "zero": 3}, [2], [[0, 1]]),
}

pytestmark = pytest.mark.slow


def _program(tmp: Path, name: str, pins: dict, ks: list[int] | None) -> Path:
    """The emitted program of the pinned plan with full recompute of ks[r] blocks on rank r (what
    the planner writes when the stack's partial_recompute needs it); None: no recompute."""
    from vlac.templates.emit import render
    from vlac.version import __version__

    exp = vlac.load(TINY, SETS)
    world = pins["dp"] * pins["pp"]
    cluster = Cluster.model_validate({"preset": "h100-sxm", "nodes": 1, "gpus_per_node": world})
    base = {"tp": 1, "cp": 1, "ep": 1, "zero": 0, "microbatch_size": MICRO_BATCH, "recompute": "none"}
    plan = vlac.plan(exp, cluster=cluster, pin={**base, **pins}).to_json()
    if ks is not None:
        plan["plan"].update(recompute="full", recompute_per_stage=["full"] * pins["pp"], recompute_layers_per_stage=ks)
    return render(exp, plan, tmp / name, __version__)


def _train(program: str, rank: int, world: int, out: str) -> dict:
    """STEPS steps of the program's own `build` on this rank; the losses and gradient norms, and
    the decoder layers whose forward this rank checkpointed."""
    from vlac.runtime.distributed import DistEnv
    from vlac.runtime.program import load_program
    from vlac.runtime.trainer import Trainer

    torch.set_num_threads(1)
    exp, plan = load_program(program)
    env = DistEnv(rank, world, rank, torch.device("cpu"))
    plan, model, optimizer, scheduler = runpy.run_path(str(Path(program) / "train.py"))["build"](exp, plan, env)
    layers = model.model.layers  # a pipeline rank's: its own, under their ids in the whole model
    held = layers.items() if isinstance(layers, torch.nn.ModuleDict) else enumerate(layers)
    checkpointed = sorted(int(i) for i, block in held if "forward" in block.__dict__)
    trainer = Trainer(exp, plan, model, optimizer, scheduler, env, Path(out))
    mets = [trainer.train_step() for _ in range(STEPS)]
    return {"losses": [m.loss for m in mets], "grad_norms": [m.grad_norm for m in mets], "checkpointed": checkpointed}


def _rank(rank: int, program: str, out: str) -> dict:
    result = _train(program, rank, 2, out)
    every = [None, None]
    torch.distributed.all_gather_object(every, result["checkpointed"])
    return {**result, "checkpointed": every}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict]:
    os.environ["OMP_NUM_THREADS"] = "1"
    tmp = tmp_path_factory.mktemp("partial-recompute")
    cases = {name: (str(_program(tmp, name, pins, ks)), str(tmp / name / "run"))
             for name, (pins, ks, _) in LAYOUTS.items()}
    results = spawn_cases(_rank, cases, nprocs=2, out=tmp / "results.json")
    alone = _program(tmp, "alone", {"dp": 1, "pp": 1}, None)  # one process, no recompute
    return results, _train(str(alone), 0, 1, str(tmp / "alone" / "run"))


def _max_rel(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) == STEPS
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_partial_recompute_layouts_reproduce_one_process(runs, name):
    results, alone = runs
    run = results[name]
    pins, ks, layers = LAYOUTS[name]
    assert alone["checkpointed"] == []
    # each rank checkpointed what RECOMPUTE names for it (a dp pair: the same layers on both)
    assert run["checkpointed"] == (layers if pins["pp"] == 2 else layers * 2)
    assert _max_rel(run["losses"], alone["losses"]) <= TOLERANCE, (run["losses"], alone["losses"])
    assert _max_rel(run["grad_norms"], alone["grad_norms"]) <= TOLERANCE, (run["grad_norms"], alone["grad_norms"])
