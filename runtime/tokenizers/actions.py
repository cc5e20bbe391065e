"""RT-2 style action tokens: every action dimension discretised into `bins` uniform bins over
[low, high]; decoding maps a bin back to its centre."""

from __future__ import annotations

import numpy as np

from vlac.spec.modalities import ActionBins


class ActionTokenizer:
    def __init__(self, spec: ActionBins):
        self.spec = spec
        self.width = (spec.high - spec.low) / spec.bins

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """actions [..., dims] (clipped to [low, high]) -> bin ids [..., dims] in 0..bins-1."""
        a = np.clip(np.asarray(actions, dtype=np.float64), self.spec.low, self.spec.high)
        return np.minimum(((a - self.spec.low) / self.width).astype(np.int64), self.spec.bins - 1)

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """bin ids -> bin centres."""
        return self.spec.low + (np.asarray(bins, dtype=np.float64) + 0.5) * self.width

    @property
    def max_error(self) -> float:
        """Largest |decode(encode(a)) - a| for a in range: half a bin."""
        return self.width / 2
