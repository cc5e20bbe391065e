"""Partial full recompute per pipeline rank (plan.recompute_layers_per_stage, f<k>): the runtime
checkpoints exactly the decoder layers the plan names for each rank, in each of its (virtual)
stages, and nothing else; train.py's RECOMPUTE states them and an edit to it is what runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vlac
from vlac.compiler.recompute_choice import full_recompute_layers
from vlac.runtime.distributed import DistEnv
from vlac.runtime.model import build_model
from vlac.runtime.parallel import parallelize
from vlac.runtime.parallel.activation_checkpoint import apply_stage_recompute
from vlac.runtime.parallel.mesh import ParallelDims
from vlac.runtime.parallel.pipeline import model_view, split_layers
from vlac.runtime.program import with_layout
from vlac.runtime.recompute import iter_blocks
from vlac.spec.system import Cluster
from vlac.templates.emit import layout_context

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "examples" / "tiny_vla.yaml"
EIGHT = ["backbone.layers=8"]


def pinned_plan(exp, world: int, ks: list[int], **pins) -> dict:
    """The planner's plan for the pinned layout, with full recompute of ks[r] blocks on pipeline
    rank r (what the planner writes when a stack with partial_recompute needs it)."""
    cluster = Cluster.model_validate({"preset": "h100-sxm", "nodes": 1, "gpus_per_node": world})
    base = {"tp": 1, "cp": 1, "ep": 1, "zero": 0, "microbatch_size": 4}
    plan = vlac.plan(exp, cluster=cluster, pin={**base, **pins}).to_json()
    p = plan["plan"]
    p.update(recompute="full", recompute_per_stage=["full"] * p["pp"], recompute_layers_per_stage=list(ks))
    return plan


def wrapped(model) -> list[int]:
    """Decoder layers whose forward is checkpointed (apply_recompute wraps it on the instance)."""
    return [int(name.split(".")[1]) for name, block in iter_blocks(model)
            if name.startswith("layers.") and "forward" in block.__dict__]


def test_the_rule_spreads_k_over_the_ranks_chunks_first_layers_first():
    assert full_recompute_layers([[0, 1, 2, 3]], 2) == [0, 1]
    assert full_recompute_layers([[0, 1], [4, 5]], 3) == [0, 1, 4]  # the earlier chunk takes the remainder
    assert full_recompute_layers([[0], [4, 5, 6]], 3) == [0, 4, 5]  # a short chunk gives its share on
    assert full_recompute_layers([[2, 3], [6, 7]], 9) == [2, 3, 6, 7]


@pytest.mark.parametrize("pins, ks, per_chunk", [
    # 1F1B: chunks [0..3] and [4..7], k = 3 and 1
    ({"dp": 1, "pp": 2, "schedule": "1f1b"}, [3, 1], [[0, 1, 2], [4]]),
    # interleaved: rank 0 runs chunks 0 and 2 ([0, 1], [4, 5]), rank 1 chunks 1 and 3 ([2, 3], [6, 7])
    ({"dp": 1, "pp": 2, "schedule": "interleaved_1f1b", "virtual_stages": 2}, [3, 1], [[0, 1], [2], [4], []]),
])
def test_each_stage_checkpoints_the_layers_the_plan_names_for_its_rank(pins, ks, per_chunk):
    exp = vlac.load(TINY, EIGHT)
    plan = pinned_plan(exp, 2, ks, **pins)
    p = plan["plan"]
    pp, v = p["pp"], p["virtual_stages"]
    assert [len(c) for c in split_layers(p["stage_split"], 8, pp * v)] == [8 // (pp * v)] * (pp * v)
    dims = ParallelDims.from_plan(plan)
    per_stage = split_layers(p["stage_split"], 8, pp * v)
    for rank in range(pp):
        model = build_model(exp, "meta")
        chunks = []
        for s in range(rank, pp * v, pp):  # as build_pipeline builds this rank's stages
            view = model_view(model, per_stage[s], s == 0, s == pp * v - 1)
            apply_stage_recompute(model, view, dims.recompute[rank], dims.full_layers(rank))
            chunks.append(sorted(set(wrapped(model)) & set(per_stage[s])))
        assert chunks == per_chunk[rank::pp], rank
        assert len(wrapped(model)) == ks[rank]  # exactly k, none on another rank's layers


def test_one_process_checkpoints_the_first_k_layers_through_parallelize():
    exp = vlac.load(TINY, EIGHT + ["cluster.gpus_per_node=1", "parallelism.dp=1"])
    plan = pinned_plan(exp, 1, [3], dp=1, pp=1)
    model = build_model(exp, "cpu")
    parallelize(model, exp, plan, DistEnv(0, 1, 0, torch.device("cpu")))
    assert wrapped(model) == [0, 1, 2]
    # the plan's policy on every block where it covers all of them
    plan["plan"]["recompute_layers_per_stage"] = [8]
    parallelize(model := build_model(exp, "cpu"), exp, plan, DistEnv(0, 1, 0, torch.device("cpu")))
    assert wrapped(model) == list(range(8))


def test_train_py_states_the_layers_and_an_edit_is_what_runs():
    exp = vlac.load(TINY, EIGHT)
    plan = pinned_plan(exp, 2, [3, 1], dp=1, pp=2, schedule="interleaved_1f1b", virtual_stages=2)
    assert layout_context(exp, plan)["recompute"] == [{"full": [0, 1, 4]}, {"full": [2]}]
    mesh = {k: plan["plan"][k] for k in plan["plan"]["mesh_order"]}
    same = with_layout(plan, mesh, pipeline=dict(plan["plan"]), recompute=[{"full": [0, 1, 4]}, {"full": [2]}])
    assert ParallelDims.from_plan(same).recompute_layers == ((0, 1, 4), (2,))
    edited = with_layout(plan, mesh, pipeline=dict(plan["plan"]), recompute=[{"full": [5]}, "selective"])
    dims = ParallelDims.from_plan(edited)
    assert dims.recompute == ("full", "selective") and dims.recompute_layers == ((5,), None)
    with pytest.raises(ValueError, match=r"RECOMPUTE\[0\] names decoder layers \[2\] that pipeline rank 0 does not hold"):
        ParallelDims.from_plan(with_layout(plan, mesh, pipeline=dict(plan["plan"]), recompute=[{"full": [2]}, "none"]))
    with pytest.raises(ValueError, match=r"RECOMPUTE\[1\] = \{'partial': 2\}: give one of"):
        with_layout(plan, mesh, recompute=["none", {"partial": 2}])
