"""Evaluation runs forward only: `ParallelModel.forward` under no_grad gives the loss that
`forward_backward` gives for the same micro-batches (1e-6), on one process and under a two-stage
pipeline (the schedule's forward-only pass), and allocates no gradient."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import vlac
from vlac.spec.system import Cluster

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
LAYOUT = {"dp": 1, "tp": 1, "pp": 1, "ep": 1, "cp": 1, "zero": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plan(spec: str, profile: str | None, world: int, pins: dict) -> dict:
    exp = vlac.load(EXAMPLES / spec, [], profile)
    cluster = Cluster.model_validate({"preset": "h100-sxm", "nodes": 1, "gpus_per_node": world})
    return vlac.plan(exp, cluster=cluster, pin={**LAYOUT, **pins}).to_json()


def _compare(rank: int, world: int, port: int, spec: str, profile: str | None, plan: dict) -> dict:
    """Eval and train losses of step 0's micro-batches on this rank, and the gradients eval left."""
    from vlac.runtime.data import SyntheticData
    from vlac.runtime.distributed import DistEnv
    from vlac.runtime.model import build_model
    from vlac.runtime.parallel import parallelize
    from vlac.runtime.trainer import rank_micro_batches

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world)
    try:
        exp = vlac.load(EXAMPLES / spec, [], profile)
        layout = parallelize(build_model(exp), exp, plan, DistEnv(rank, world, rank, torch.device("cpu")))
        batches = rank_micro_batches(SyntheticData(exp), 0, plan["plan"], layout.mesh, torch.device("cpu"))
        torch.manual_seed(1)
        with torch.no_grad():
            ev = layout.forward(batches)
        grads_after_eval = sum(p.grad is not None for p in layout.parameters())
        torch.manual_seed(1)
        tr = layout.forward_backward(batches)
        grads_after_train = sum(p.grad is not None for p in layout.parameters())
        return {"eval": [float(ev.ar), float(ev.aux)], "train": [float(tr.ar), float(tr.aux)],
                "grads_after_eval": grads_after_eval, "grads_after_train": grads_after_train}
    finally:
        torch.distributed.destroy_process_group()


def _check(r: dict) -> None:
    assert r["grads_after_eval"] == 0
    assert r["grads_after_train"] > 0  # the count above sees gradients when there are some
    for got, want in zip(r["eval"], r["train"]):
        assert abs(got - want) <= 1e-6 * max(1.0, abs(want)), r
    assert r["eval"][0] > 0


def test_eval_forward_matches_forward_backward_on_one_process():
    torch.set_num_threads(1)
    plan = _plan("tiny_vla.yaml", None, 1, {"microbatch_size": 2})
    _check(_compare(0, 1, _free_port(), "tiny_vla.yaml", None, plan))


def _rank(rank: int, port: int, plan: dict, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    result = _compare(rank, 2, port, "dense_text_1b.yaml", "tiny", plan)
    Path(f"{out}.{rank}").write_text(json.dumps(result))


@pytest.mark.slow
def test_eval_forward_matches_forward_backward_under_pp2(tmp_path):
    plan = _plan("dense_text_1b.yaml", "tiny", 2, {"pp": 2, "microbatch_size": 2})
    out = tmp_path / "r"
    mp.spawn(_rank, args=(_free_port(), plan, str(out)), nprocs=2)
    results = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]
    for r in results:
        _check(r)
    assert results[0]["eval"] == results[1]["eval"]  # the loss is reported alike on both stages
