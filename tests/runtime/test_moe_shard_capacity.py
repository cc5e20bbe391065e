"""A layer with a capacity that routes its own tokens (tensor parallelism with sequence parallelism,
context parallelism, or both: runtime/parallel/moe_local_routing.py) keeps exactly the copies one
process keeps: each rank numbers its copies after the rows before its own and the pieces of its row
that come before its own, whichever rank holds them, from every rank's per-(row, piece, expert)
counts (moe_local_routing_order.py). Here the ranks run one after another in one process, twice:
the first pass records each rank's counts, the second hands every rank all of them as the
all-gathers would."""

from itertools import product

import pytest
import torch

import vlac
from vlac.runtime.moe import MoELayer
from vlac.runtime.parallel.context_parallel import rank_positions
from vlac.runtime.parallel.moe_local_routing_order import SPLIT_ORDER, CopyOrder, RowPieces, _Split

from runtime_helpers import TINY

CUTS = {"cp": lambda pos, size, r: pos[rank_positions(pos.numel(), size, r)],
        "tp": lambda pos, size, r: pos.chunk(size)[r]}


def _layer(top_k: int, cf: float) -> MoELayer:
    exp = vlac.load(TINY, ["moe.experts=4", f"moe.top_k={top_k}", f"moe.capacity_factor={cf}", "moe.shared_experts=1"])
    torch.manual_seed(0)
    return MoELayer(exp.backbone, exp.moe)


def _positions(seq: int, splits: dict[str, int], ranks: tuple[int, ...]) -> torch.Tensor:
    pos = torch.arange(seq)
    for (d, size), r in zip(splits.items(), ranks):
        pos = CUTS[d](pos, size, r)
    return pos


def _run_ranks(layer: MoELayer, x: torch.Tensor, splits: dict[str, int], shuffle_counts: bool = False):
    """Every rank's (output, dropped) with the counts exchanged by hand; `splits` in SPLIT_ORDER."""
    names, sizes = list(splits), list(splits.values())
    combos = list(product(*(range(n) for n in sizes)))
    records: dict[tuple, torch.Tensor] = {}

    def stacked(ranks: tuple, level: int) -> torch.Tensor:
        """What rank `ranks` holds after gathering the `level` innermost splits."""
        if level == 0:
            return records.get(ranks)
        i = len(names) - level
        return torch.stack([stacked(ranks[:i] + (a,) + ranks[i + 1:], level - 1) for a in range(sizes[i])])

    outs = {}
    for _ in range(2):  # pass 1 records every rank's counts, pass 2 uses them
        for ranks in combos:
            order = CopyOrder()
            for i, (d, size) in enumerate(splits.items()):
                def gather(counts, i=i, ranks=ranks):
                    level = len(names) - i
                    if level == 1:
                        records.setdefault(ranks, counts)
                        torch.testing.assert_close(counts, records[ranks])
                    if any(r not in records for r in combos):  # pass 1: shapes only
                        return counts.unsqueeze(0).expand(sizes[i], *counts.shape)
                    out = stacked(ranks, level)
                    return out.roll(1, 0) if shuffle_counts else out
                order.add(d, size, ranks[i], CUTS[d], gather)
            layer.copy_offsets = order
            pos = _positions(x.size(1), splits, ranks)
            y, _, _, dropped = layer(x[:, pos])
            outs[ranks] = (pos, y, dropped)
    layer.copy_offsets = None
    return outs


@pytest.mark.parametrize("top_k, cf, splits, seq", [
    (2, 0.5, {"tp": 2}, 16), (1, 0.75, {"tp": 4}, 16), (2, 2.0, {"tp": 2}, 16),  # sequence shards
    (2, 0.5, {"cp": 2}, 16), (1, 0.6, {"cp": 4}, 16),  # cp's chunk pairs: two pieces of each row
    (2, 0.5, {"cp": 2, "tp": 2}, 16), (2, 0.7, {"cp": 2, "tp": 4}, 32),
    (2, 0.5, {"cp": 2, "tp": 3}, 24),  # a tp shard straddles the cp rank's two chunks
])
def test_ranks_keep_the_copies_one_process_keeps(top_k, cf, splits, seq):
    layer = _layer(top_k, cf)
    torch.manual_seed(1)
    x = torch.randn(3, seq, 64)
    whole, _, _, dropped = layer(x)
    outs = _run_ranks(layer, x, splits)
    y = torch.zeros_like(whole)
    for pos, out, _ in outs.values():
        y[:, pos] = out
    torch.testing.assert_close(y, whole, rtol=1e-5, atol=1e-6)
    assert sum(d for _, _, d in outs.values()).item() == pytest.approx(dropped.item())  # shares of the whole's
    assert (dropped.item() > 0) == (cf < 1)  # the small capacities really drop copies


def test_ranks_that_ignore_each_others_counts_miss():
    """The negative control: the counts of the other ranks handed round in the wrong order (each
    rank's pieces then numbered after the wrong ones) change which copies are kept."""
    layer = _layer(2, 0.5)
    torch.manual_seed(1)
    x = torch.randn(3, 16, 64)
    whole, _, _, _ = layer(x)
    y = torch.zeros_like(whole)
    for pos, out, _ in _run_ranks(layer, x, {"cp": 2}, shuffle_counts=True).values():
        y[:, pos] = out
    assert (y - whole).abs().max() > 1e-2


def test_row_pieces_follow_cp_chunks_then_tp_shards():
    """cp 2 x tp 3 on 24 positions: cp rank 0 holds 0-5 and 18-23, rank 1 6-17; each tp rank 4 of
    those, so tp rank 1 of cp rank 0 holds 4-5 and 18-19 (two pieces)."""
    splits = [_Split(2, 0, CUTS["cp"], None), _Split(3, 1, CUTS["tp"], None)]
    rp = RowPieces.build(4, splits)
    assert rp.starts.tolist() == [[0, 24], [4, 18], [20, 24], [6, 24], [10, 24], [14, 24]]
    assert rp.me == 1 and rp.piece.tolist() == [0, 0, 1, 1]
    assert SPLIT_ORDER == ("cp", "tp")
