"""Layouts of many pipeline shapes in one array pass (vlac.compiler.cost_model).

A layout's per-rank figures are arrays over its pipeline ranks; layouts of different pipeline
shapes (pp, virtual stages) have different numbers of ranks. Each pass pads the rank axis to
its largest pp and masks the padding: a padded rank holds no layer (its counts are zero, so
every per-rank figure built from them is zero) and the mask keeps it out of maxima, argmaxes
and memory checks. Sums over ranks and over layer keys run one term at a time in a fixed
order, so a row's figures do not depend on which other rows, or how much padding, share its
pass: costing a subset of layouts gives those rows the same bits as costing them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .cost_model import CostModel

# rows x pipeline ranks per pass: bounds the [rows, ranks, policies] arrays (about 12 MB each)
CELLS = 1 << 19
# a pass stops taking the next pp once it has this many rows and padding would add more than
# PADDING of its real cells: few rows cost the pass's fixed overhead, many rows their cells
MIN_ROWS = 512
PADDING = 0.25


def row_chunks(pp: np.ndarray, cells: int | None = None) -> list[np.ndarray]:
    """Row indices in passes, rows sorted by pp: consecutive pp values share a pass while it is
    small or pads little, and no pass holds more than `cells` rows x its largest pp (one row
    at least)."""
    cells = cells or CELLS
    order = np.argsort(pp, kind="stable")
    values, sizes = np.unique(pp, return_counts=True)
    spans, start, rows, real = [], 0, 0, 0  # the open pass: sorted rows [start, start + rows)
    for val, size in zip(values.tolist(), sizes.tolist()):
        padded = (rows + size) * val
        if rows and (padded > cells or (rows >= MIN_ROWS and padded > (1 + PADDING) * (real + size * val))):
            spans.append((start, rows, prev))
            start, rows, real = start + rows, 0, 0
        rows, real, prev = rows + size, real + size * val, val
    if rows:
        spans.append((start, rows, prev))
    out = []
    for first, n, width in spans:  # a pass of one pp may still hold too many cells: split it
        step = max(1, cells // width)
        out += [order[i:min(i + step, first + n)] for i in range(first, first + n, step)]
    return out


def key_sum(per_key: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """sum over layer keys k of per_key[:, k, ...] * counts[:, :, k]: per_key [N, K, ...] per
    row, counts [N, ranks, K] layers of each key per rank -> [N, ranks, ...]. One key at a time,
    in key order (see the module docstring)."""
    extra = (1,) * (per_key.ndim - 2)
    out = None
    for k in range(counts.shape[2]):
        term = per_key[:, None, k] * counts[:, :, k].reshape(counts.shape[:2] + extra)
        out = term if out is None else out + term
    return out if out is not None else np.zeros(counts.shape[:2] + per_key.shape[2:])


def rank_sum(a: np.ndarray) -> np.ndarray:
    """Sum over the rank axis (axis 1) one rank at a time: padded zeros leave it unchanged."""
    out = a[:, 0].copy()
    for r in range(1, a.shape[1]):
        out += a[:, r]
    return out


class PipelineShapes:
    """The pipeline shapes of a pass's rows: each row's shape, the layers of each key each rank
    of each shape holds (padded to the pass's largest pp) and which ranks are real."""

    def __init__(self, model: CostModel, pp: np.ndarray, v: np.ndarray):
        code = pp.astype(np.int64) * 1000 + v
        shapes, self.of_row = np.unique(code, return_inverse=True)
        self.of_row = self.of_row.reshape(-1)
        self.width = int(pp.max())
        self.counts = np.zeros((len(shapes), self.width, model.p.n_keys))  # [shapes, ranks, keys]
        for s, sc in enumerate(shapes):
            _, counts = model.composition(int(sc // 1000), int(sc % 1000))
            self.counts[s, :len(counts)] = counts
        self.mask = np.arange(self.width)[None, :] < pp[:, None]  # [rows, ranks]: real ranks

    def per_rank(self, per_key: np.ndarray) -> np.ndarray:
        """Per-layer figures ([K] or [K, figures]) summed over each row's layers, per rank:
        [rows, ranks] or [figures, rows, ranks] (each figure contiguous, as the passes read them)."""
        by_shape = key_sum(np.broadcast_to(per_key, (len(self.counts),) + per_key.shape), self.counts)
        if by_shape.ndim == 2:
            return by_shape[self.of_row]
        return np.ascontiguousarray(np.moveaxis(by_shape, -1, 0))[:, self.of_row]


def in_flight(sched: np.ndarray, m: np.ndarray, pp: np.ndarray, v: np.ndarray, width: int,
              gpipe: int, interleaved: int) -> np.ndarray:
    """Micro-batches' worth of a rank's activations held at its peak ([rows, ranks]): p - rank
    for 1F1B and zero-bubble, Megatron's interleaved warm-up, m for GPipe, one without a
    pipeline. `m`, `pp`, `v`: [rows, 1]."""
    r = np.arange(width, dtype=float)[None, :]
    one_f_one_b = np.minimum(m, pp - r)
    warm = np.minimum(m * v, (pp - r - 1) * 2 + (v - 1) * pp + 1) / v
    s = sched[:, None]
    held = np.where(s == gpipe, m, np.where(s == interleaved, warm, one_f_one_b))
    return np.where(pp == 1, 1.0, held)
