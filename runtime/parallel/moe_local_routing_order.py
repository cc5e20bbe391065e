"""The first-come order of a capacity MoE layer's token copies when ranks split its micro-batch.

One process keeps the copies to each expert in the micro-batch's token order, row by row and each
row in sequence order, up to the expert's capacity (runtime/moe.py `_capacity_dispatch`). When
ranks route their own tokens (moe_local_routing.py) each holds, of every row, some pieces:
runs of consecutive positions. Under context parallelism a cp rank holds chunks r and 2*cp-1-r of
2*cp (context_parallel.py), then under sequence parallelism a tp rank a consecutive shard of
those (one or two pieces: a shard may straddle the two chunks). A copy's place in the whole
micro-batch's order is

  the copies to its expert in the rows before its own (every rank's, all pieces)
  + those in the pieces of its row that start before its own piece (any rank's)
  + those before it in its own piece.

So the ranks all-gather their per-(row, piece, expert) copy counts (a few integers per row, not
the tokens) and each numbers its copies as one process does, whatever the split. The pieces are
pure index maths on the positions of a row: each split is applied to the positions the previous
one left, in the order the model applies them (cp's cut at the first block, then sp's split
inside it), and the counts are gathered over the innermost split first, so the gathered ranks
come out in that same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from math import prod
from typing import Callable

import torch

SPLIT_ORDER = ("cp", "tp")  # context_parallel.py cuts the sequence before sequence parallelism splits it

Cut = Callable[[torch.Tensor, int, int], torch.Tensor]  # (positions, size, rank) -> that rank's positions


@dataclass(frozen=True)
class _Split:
    size: int
    rank: int
    cut: Cut
    gather: Callable[[torch.Tensor], torch.Tensor]  # counts -> [size, *counts.shape], in rank order


@dataclass(frozen=True)
class RowPieces:
    """Where every rank's tokens lie in a row: `starts` [R, P] the first position of each rank's
    pieces (the end of the row for the padding of a rank with fewer), `me` this rank's index in R,
    `piece` [s] which of this rank's pieces each of its tokens belongs to."""

    starts: torch.Tensor
    me: int
    piece: torch.Tensor

    @classmethod
    def build(cls, local_tokens: int, splits: list[_Split]) -> "RowPieces":
        seq = local_tokens * prod(sp.size for sp in splits)
        runs = []  # per rank (in gather order): the start and length of each run of consecutive positions
        for ranks in product(*(range(sp.size) for sp in splits)):
            pos = torch.arange(seq)
            for sp, r in zip(splits, ranks):
                pos = sp.cut(pos, sp.size, r)
            runs.append(pos)
        new_piece = [torch.cat([torch.ones(1, dtype=torch.bool), pos[1:] != pos[:-1] + 1]) for pos in runs]
        pieces = max(int(b.sum()) for b in new_piece)
        starts = torch.full((len(runs), pieces), seq, dtype=torch.long)
        for r, (pos, b) in enumerate(zip(runs, new_piece)):
            starts[r, :int(b.sum())] = pos[b]
        me = 0
        for sp in splits:
            me = me * sp.size + sp.rank
        return cls(starts, me, new_piece[me].long().cumsum(0) - 1)


class CopyOrder:
    """A capacity layer's `copy_offsets` (runtime/moe.py) for the splits of its tokens between
    ranks, added one by one as the layout is applied (`add`)."""

    def __init__(self):
        self.splits: dict[str, _Split] = {}
        self._pieces: dict[tuple[int, torch.device], RowPieces] = {}

    def add(self, over: str, size: int, rank: int, cut: Cut, gather: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if over not in SPLIT_ORDER:
            raise ValueError(f"a token split over {over!r}: only {', '.join(SPLIT_ORDER)} split an MoE layer's tokens")
        self.splits[over] = _Split(size, rank, cut, gather)
        self._pieces.clear()

    @property
    def ranks(self) -> int:
        """How many ranks split each row: the whole micro-batch has this many times a rank's tokens."""
        return prod(sp.size for sp in self.splits.values())

    def __call__(self, onehot: torch.Tensor, top_k: int) -> torch.Tensor:
        """onehot [b, s*k, E]: each of this rank's copies (token-major) one-hot over the experts.
        Returns [b, s*k, E]: what to add to the copies' running count over this rank's copies of
        their row (onehot.cumsum(1)) to give their count in the whole micro-batch's order."""
        splits = [self.splits[d] for d in SPLIT_ORDER if d in self.splits]
        rows, copies, _ = onehot.shape
        key = (copies // top_k, onehot.device)
        if key not in self._pieces:
            built = RowPieces.build(copies // top_k, splits)
            self._pieces[key] = RowPieces(built.starts.to(onehot.device), built.me, built.piece.to(onehot.device))
        rp = self._pieces[key]
        piece = rp.piece.repeat_interleave(top_k)  # of each copy
        counts = onehot.new_zeros(rows, rp.starts.size(1), onehot.size(2)).index_add_(1, piece, onehot)  # [b, P, E]
        every = counts
        for sp in reversed(splits):  # innermost first: the stacked ranks end up outermost-major
            every = sp.gather(every)
            every = every.reshape(-1, *counts.shape)
        return copy_offsets(counts, every, rp)[:, piece]


def copy_offsets(counts: torch.Tensor, every: torch.Tensor, rp: RowPieces) -> torch.Tensor:
    """[b, P, E] per piece of this rank: the copies to each expert ahead of the piece in the whole
    micro-batch (earlier rows; earlier pieces of its row, any rank's) less this rank's own copies
    in its earlier pieces of the row, which its running count already holds. `counts` [b, P, E]
    this rank's, `every` [R, b, P, E] every rank's."""
    row_total = every.sum((0, 2))  # [b, E]
    earlier_rows = row_total.cumsum(0) - row_total
    ahead = rp.starts.unsqueeze(0) < rp.starts[rp.me].view(-1, 1, 1)  # [my piece, R, P]
    in_row = (ahead[:, :, None, :, None] * every.unsqueeze(0)).sum((1, 3)).transpose(0, 1)  # [b, my piece, E]
    mine_before = counts.cumsum(1) - counts
    return earlier_rows.unsqueeze(1) + in_row - mine_before
