"""The packing plan: which documents make up packed sequence i, as a pure function of (seed, i)
and the documents' lengths, so every data-parallel layout sees the same global batch and a resumed
run continues at exactly the next sequence.

- Mixture: sequence i belongs to one component, drawn by the spec's weights from a counter-based
  stream (chunk i // CHUNK of a generator seeded by (seed, chunk)); the component's k-th sequence
  is found by counting earlier draws of it.
- Per component, epoch e visits its documents in a permutation seeded by (seed, component, e);
  each window of consecutive documents holding about WINDOW_ROWS rows of tokens is packed
  first-fit-decreasing into rows of seq_len positions
  (a row takes at most one document with per-sample batch entries such as continuous features,
  since the batch holds one of those per row). Rows of epoch e follow those of e-1.
"""

from __future__ import annotations

import numpy as np

CHUNK = 4096  # mixture draws per generator chunk
WINDOW_ROWS = 64  # rows' worth of tokens packed together: only a window's last rows are part-full, so
# a window sized in tokens (not documents) keeps rows ~98% full for short and long documents alike
_MIXTURE_STREAM = 0x5EED  # separates the mixture draws from the epoch permutations


class ComponentPlan:
    def __init__(self, lengths: np.ndarray, has_extras: np.ndarray, seq_len: int, seed: int, component: int):
        self.lengths, self.has_extras = np.asarray(lengths, np.int64), np.asarray(has_extras, bool)
        self.seq_len, self.seed, self.component = seq_len, seed, component
        self._epochs: list[tuple[np.ndarray, np.ndarray]] = []  # (row offsets [R+1], document ids)
        self._first_row = [0]  # first global row of each planned epoch

    def _plan_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.random.default_rng([self.seed, self.component, epoch]).permutation(len(self.lengths))
        offsets, docs = [0], []
        window = np.cumsum(self.lengths[order]) // (WINDOW_ROWS * self.seq_len)  # window of each document
        bounds = np.flatnonzero(np.diff(window)) + 1
        for part in np.split(order, bounds):
            for row in self._pack_window(part):
                docs += row
                offsets.append(len(docs))
        return np.array(offsets, np.int64), np.array(docs, np.int64)

    def _pack_window(self, ids: np.ndarray) -> list[list[int]]:
        ids = ids[np.argsort(-self.lengths[ids], kind="stable")]  # longest first, ties in visiting order
        room = np.zeros(len(ids), np.int64)  # free positions of each open row
        taken = np.zeros(len(ids), bool)  # the row already holds a document with extras
        rows: list[list[int]] = []
        for d in ids:
            need, extra = self.lengths[d], self.has_extras[d]
            fits = (room[:len(rows)] >= need) & ~(taken[:len(rows)] & extra)
            r = int(fits.argmax()) if fits.any() else len(rows)
            if r == len(rows):
                rows.append([])
                room[r] = self.seq_len
            rows[r].append(int(d))
            room[r] -= need
            taken[r] |= extra
        return rows

    def row(self, k: int) -> tuple[int, np.ndarray]:
        """(epoch, document ids) of this component's k-th row."""
        while self._first_row[-1] <= k:
            self._epochs.append(self._plan_epoch(len(self._epochs)))
            self._first_row.append(self._first_row[-1] + len(self._epochs[-1][0]) - 1)
        e = int(np.searchsorted(self._first_row, k, side="right")) - 1
        offsets, docs = self._epochs[e]
        j = k - self._first_row[e]
        return e, docs[offsets[j]:offsets[j + 1]]


class MixturePlan:
    """Sequence i -> (component, that component's row index)."""

    def __init__(self, weights: list[float], seed: int):
        w = np.asarray(weights, np.float64)
        self.p, self.seed = w / w.sum(), seed
        self._counts = [np.zeros(len(w), np.int64)]  # draws of each component before chunk c
        self._last: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int64))

    def _draws(self, chunk: int) -> np.ndarray:
        if self._last[0] != chunk:
            rng = np.random.default_rng([self.seed, _MIXTURE_STREAM, chunk])
            self._last = (chunk, rng.choice(len(self.p), size=CHUNK, p=self.p))
        return self._last[1]

    def rows_before(self, comp: int, i: int) -> int:
        """Sequences before sequence i that component `comp` supplies."""
        chunk, at = divmod(i, CHUNK)
        while len(self._counts) <= chunk:
            c = len(self._counts) - 1
            self._counts.append(self._counts[-1] + np.bincount(self._draws(c), minlength=len(self.p)))
        return int(self._counts[chunk][comp] + (self._draws(chunk)[:at] == comp).sum())

    def locate(self, i: int) -> tuple[int, int]:
        comp = int(self._draws(i // CHUNK)[i % CHUNK])
        return comp, self.rows_before(comp, i)
