"""A layer with a capacity that routes its own sequence shard (tensor parallelism with sequence
parallelism, runtime/parallel/moe_local_routing.py) keeps exactly the copies one process keeps:
each shard ranks its copies after the rows before its own and the shards before it in its row,
from the shards' per-(row, expert) counts. Here the shards run one after another in one process,
the counts exchange done by hand."""

import pytest
import torch

import vlac
from vlac.runtime.moe import MoELayer

from runtime_helpers import TINY


def _layer(top_k: int, cf: float) -> MoELayer:
    exp = vlac.load(TINY, ["moe.experts=4", f"moe.top_k={top_k}", f"moe.capacity_factor={cf}", "moe.shared_experts=1"])
    torch.manual_seed(0)
    return MoELayer(exp.backbone, exp.moe)


def _row_counts(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """[b, E] copies each row of `x` [b, s, d] sends to each expert."""
    _, _, idx, _ = layer.router(x.reshape(-1, x.size(-1)))
    onehot = torch.nn.functional.one_hot(idx.reshape(x.size(0), -1), layer.cfg.experts)
    return onehot.sum(1)


@pytest.mark.parametrize("top_k, cf, shards", [(2, 0.5, 2), (1, 0.75, 4), (2, 2.0, 2)])
def test_sequence_shards_keep_the_copies_one_process_keeps(top_k, cf, shards):
    layer = _layer(top_k, cf)
    torch.manual_seed(1)
    x = torch.randn(3, 16, 64, requires_grad=True)
    whole, _, _, dropped = layer(x)
    pieces = x.detach().chunk(shards, dim=1)
    counts = torch.stack([_row_counts(layer, p) for p in pieces])
    outs, drops = [], []
    for me, piece in enumerate(pieces):
        layer.token_counts = lambda c, me=me: (torch.testing.assert_close(c, counts[me]) or counts, me)
        y, _, _, d = layer(piece)
        outs.append(y)
        drops.append(d)
    layer.token_counts = None
    torch.testing.assert_close(torch.cat(outs, dim=1), whole, rtol=1e-5, atol=1e-6)
    assert sum(drops).item() == pytest.approx(dropped.item())  # each shard's share of the whole's
    assert (dropped.item() > 0) == (cf < 1)  # the small capacities really drop copies
