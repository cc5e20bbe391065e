"""The trainer's micro-batches: each rank builds only its own share of the global batch, and the
loss normaliser is the global count of target tokens, summed over the data-parallel replicas only."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, layout: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = build_mesh(ParallelDims.from_plan(layout), "cpu")
        data = SyntheticData(vlac.load(TINY))
        built = recording(data)
        batches = rank_micro_batches(data, STEP, layout, mesh, torch.device("cpu"))
        Path(out, f"{rank}.json").write_text(json.dumps({"norm": float(batches[0]["loss_norm"]), "built": built}))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("layout, replicas", [
    (plan(dp=2, mb=4, m=2), 2),  # replicated data parallel
    (plan(dp=2, mb=4, m=2, zero=3), 2),  # sharded: the replicas are dp_shard coordinates
    (plan(dp=1, mb=8, m=2, tp=2), 1),  # one replica on two ranks: counted once, not twice
])
def test_the_norm_is_the_global_count_summed_over_replicas_only(tmp_path, layout, replicas):
    mp.spawn(_rank, args=(2, _free_port(), layout, str(tmp_path)), nprocs=2)
    exp = vlac.load(TINY)
    g = exp.train.global_batch
    expected = SyntheticData(exp).global_loss_tokens(STEP)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert [r["norm"] for r in ranks] == [expected, expected]
    everything = list(range(STEP * g, (STEP + 1) * g))
    if replicas == 2:  # disjoint halves that tile the batch
        assert sorted(ranks[0]["built"] + ranks[1]["built"]) == everything
    else:
        assert sorted(ranks[0]["built"]) == sorted(ranks[1]["built"]) == everything
