"""The trainer's micro-batches: each rank builds only its own share of the global batch, and the
loss normaliser is the global count of target tokens, summed over the data-parallel replicas only."""

import json
from pathlib import Path

import pytest
import torch
from process_cases import spawn_cases

import vlac
from vlac.runtime.data import IGNORE, SyntheticData
from vlac.runtime.parallel.mesh import ParallelDims, build_mesh
from vlac.runtime.trainer import rank_micro_batches

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"
STEP = 3


def plan(dp: int, mb: int, m: int, tp: int = 1, zero: int = 0) -> dict:
    return {"dp": dp, "tp": tp, "pp": 1, "cp": 1, "ep": 1, "zero": zero, "sequence_parallel": False,
            "schedule": "none", "virtual_stages": 1, "recompute": "none", "microbatch_size": mb, "num_microbatches": m}


def recording(data: SyntheticData) -> list[int]:
    """Record the index of every sample `data` builds from now on."""
    built, sample = [], data.sample

    def counted(index: int):
        built.append(index)
        return sample(index)

    data.sample = counted
    return built


class OneReplicaOfTwo:
    """dp rank 1 of a 2-replica layout with no process group: the reduction adds nothing, so the
    norm is this rank's own count."""

    dp_rank = 1

    def group(self, name: str):
        return None


def test_a_rank_builds_only_its_own_share_of_the_global_batch():
    exp = vlac.load(TINY)
    data = SyntheticData(exp)
    g = exp.train.global_batch
    p = plan(dp=2, mb=2, m=g // 4)
    built = recording(data)
    batches = rank_micro_batches(data, STEP, p, OneReplicaOfTwo(), torch.device("cpu"))
    share = [STEP * g + (micro * 2 + 1) * 2 + i for micro in range(p["num_microbatches"]) for i in range(2)]
    assert built == share  # each sample of the share once, nothing of the other replica's
    own = sum(int((b["targets"] != IGNORE).sum()) for b in batches)
    assert all(b["loss_norm"].dtype == torch.float32 and float(b["loss_norm"]) == own for b in batches)
    assert 0 < own < data.global_loss_tokens(STEP)  # a share, not the whole batch


def _rank(rank: int, layout: dict, out: str) -> None:
    """One layout on this rank of the process group (spawn_cases runs every layout in one)."""
    mesh = build_mesh(ParallelDims.from_plan(layout), "cpu")
    data = SyntheticData(vlac.load(TINY))
    built = recording(data)
    batches = rank_micro_batches(data, STEP, layout, mesh, torch.device("cpu"))
    Path(out, f"{rank}.json").write_text(json.dumps({"norm": float(batches[0]["loss_norm"]), "built": built}))


# name -> (layout, data-parallel replicas)
LAYOUTS = {
    "dp2": (plan(dp=2, mb=4, m=2), 2),  # replicated data parallel
    "fsdp2": (plan(dp=2, mb=4, m=2, zero=3), 2),  # sharded: the replicas are dp_shard coordinates
    "tp2": (plan(dp=1, mb=8, m=2, tp=2), 1),  # one replica on two ranks: counted once, not twice
}


@pytest.fixture(scope="module")
def layouts_run(tmp_path_factory) -> Path:
    """LAYOUT/{0,1}.json of every layout, from one spawn of 2 ranks (starting them costs more
    than a layout)."""
    root = tmp_path_factory.mktemp("trainer-layouts")
    for name in LAYOUTS:
        (root / name).mkdir()
    spawn_cases(_rank, {name: (layout, str(root / name)) for name, (layout, _) in LAYOUTS.items()}, nprocs=2,
                out=root / "done.json")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_the_norm_is_the_global_count_summed_over_replicas_only(layouts_run, name):
    replicas = LAYOUTS[name][1]
    exp = vlac.load(TINY)
    g = exp.train.global_batch
    expected = SyntheticData(exp).global_loss_tokens(STEP)
    ranks = [json.loads((layouts_run / name / f"{r}.json").read_text()) for r in range(2)]
    assert [r["norm"] for r in ranks] == [expected, expected]
    everything = list(range(STEP * g, (STEP + 1) * g))
    if replicas == 2:  # disjoint halves that tile the batch
        assert sorted(ranks[0]["built"] + ranks[1]["built"]) == everything
    else:
        assert sorted(ranks[0]["built"]) == sorted(ranks[1]["built"]) == everything
