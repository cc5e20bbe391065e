"""ParallelDims from plan.json and the checks that stop a plan this runtime cannot run."""

import pytest

from vlac.runtime.parallel.mesh import MESH_DIMS, LayoutError, Mesh, ParallelDims, build_mesh


def plan(**kw):
    p = {"dp": 1, "tp": 1, "pp": 1, "cp": 1, "ep": 1, "zero": 0, "sequence_parallel": False, "schedule": "none",
         "virtual_stages": 1, "recompute": "none"}
    p.update(kw)
    return {"plan": p}


def test_zero_decides_replicated_or_sharded_data_parallelism():
    rep = ParallelDims.from_plan(plan(dp=4, zero=0))
    shard = ParallelDims.from_plan(plan(dp=4, zero=3))
    assert (rep.dp_replicate, rep.dp_shard) == (4, 1)
    assert (shard.dp_replicate, shard.dp_shard) == (1, 4)
    assert rep.dp == shard.dp == 4


def test_mesh_shape_follows_the_plan_order_and_counts_the_world():
    d = ParallelDims.from_plan(plan(dp=2, tp=2, pp=2, zero=2, sequence_parallel=True, schedule="1f1b"))
    assert MESH_DIMS == ("pp", "dp_replicate", "dp_shard", "cp", "tp")
    assert d.shape == (2, 1, 2, 1, 2) and d.world == 8
    assert d.sequence_parallel
    assert d.summary() == "pp 2 x dp_shard 2 x tp 2"
    assert not ParallelDims.from_plan(plan(sequence_parallel=True)).sequence_parallel  # SP needs tp > 1


def test_process_count_mismatch_names_the_numbers_and_the_fix():
    d = ParallelDims.from_plan(plan(dp=2, tp=2))
    with pytest.raises(LayoutError, match=r"needs 4 processes .* but 2 were started; submit with 4 tasks"):
        d.check(2)
    d.check(4)


@pytest.mark.parametrize("kw, match", [
    ({"dp": 2, "ep": 4}, r"plan.ep = 4 must divide plan.dp = 2"),
    ({"pp": 2, "schedule": "dualpipe"}, r"plan.schedule = 'dualpipe'.*1f1b, interleaved_1f1b, gpipe, zero_bubble"),
    ({"pp": 2, "schedule": "1f1b", "virtual_stages": 2}, r"only interleaved_1f1b uses more than one stage"),
    ({"tp": 4, "expert_tensor_parallel": 2}, r"expert_tensor_parallel = 2 with plan.tp = 4.*--pin etp=1 or etp=4"),
    ({"pp": 2, "schedule": "1f1b", "recompute_per_stage": ["full"]}, r"lists 1 policies for pp = 2"),
])
def test_unsupported_plans_are_refused_with_the_field_and_a_fix(kw, match):
    d = ParallelDims.from_plan(plan(**kw))
    with pytest.raises(LayoutError, match=match):
        d.check(d.world)


def test_recompute_is_per_pipeline_rank():
    d = ParallelDims.from_plan(plan(pp=2, schedule="1f1b", recompute="full", recompute_per_stage=["full", "none"]))
    assert d.recompute == ("full", "none")
    assert ParallelDims.from_plan(plan(pp=2, schedule="1f1b", recompute="full")).recompute == ("full", "full")


def test_a_single_process_has_no_mesh_and_sits_at_rank_zero_everywhere():
    mesh = build_mesh(ParallelDims.from_plan(plan()), "cpu")
    assert isinstance(mesh, Mesh) and mesh.world is None and mesh.experts is None
    assert (mesh.pp_rank, mesh.tp_rank, mesh.dp_rank) == (0, 0, 0)
    assert mesh.group("dp_replicate") is None and mesh.edp_group is None


def test_a_multi_process_plan_without_a_process_group_says_how_to_start_one():
    with pytest.raises(LayoutError, match="setup"):
        build_mesh(ParallelDims.from_plan(plan(dp=2)), "cpu")
