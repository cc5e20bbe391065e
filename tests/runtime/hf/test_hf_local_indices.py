"""Which global indices a rank's piece of a DTensor holds, for every placement the runtime uses,
strided shards (FSDP over tensor parallelism on the same dimension) included. One process plays
each rank of a 2 x 2 mesh in turn over a fake process group (no communication is needed: every
piece is split locally)."""

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.placement_types import _StridedShard
from torch.testing._internal.distributed.fake_pg import FakeStore

from vlac.runtime.hf.load import local_indices, runs

PLACEMENTS = [
    (_StridedShard(0, split_factor=2), Shard(0)),  # FSDP (dp) over TP rows: interleaved pieces
    (Shard(0), Shard(1)),
    (Replicate(), Shard(1)),
    (Shard(1), Shard(0)),
]


@pytest.mark.parametrize("placements", PLACEMENTS, ids=str)
def test_pieces_are_the_indexed_rows_and_columns(placements):
    full = torch.arange(10 * 6, dtype=torch.float32).view(10, 6)
    seen = torch.zeros_like(full)
    for rank in range(4):
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=4)
        try:
            mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
            dt = distribute_tensor(full, mesh, placements, src_data_rank=None)
            local, (rows, cols) = local_indices(dt)
            assert torch.equal(local, full[rows][:, cols]), (rank, rows, cols)
            seen[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] += 1
        finally:
            dist.destroy_process_group()
    replicas = 2 if any(isinstance(p, Replicate) for p in placements) else 1
    assert torch.equal(seen, torch.full_like(full, replicas))  # every element held, once per replica


def test_runs_split_indices_into_consecutive_slices():
    assert runs([0, 1, 2, 5, 6, 9]) == [(0, slice(0, 3)), (3, slice(5, 7)), (5, slice(9, 10))]
    assert runs([4]) == [(0, slice(4, 5))]
