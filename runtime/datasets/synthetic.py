"""Procedural samples: a latent class (0-9) decides the caption and, in vlac.runtime.data's
fallbacks, the image/video/audio codes, action bins and continuous signals (with noise)."""

from __future__ import annotations

import numpy as np

from . import Episode

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VERBS = ("push", "pick", "lift", "turn", "slide", "stack", "pour", "open", "wipe", "drop")


class SyntheticGenerator:
    classes = 10

    def __init__(self, seed: int):
        self.seed = seed

    def episode(self, rng: np.random.Generator, split: str) -> Episode:
        label = int(rng.integers(self.classes))
        return Episode(label=label, answer=f"{VERBS[label]} the {CLASS_NAMES[label]}")

    def corpus(self) -> list[str]:
        return [f"{v} the {c}" for v in VERBS for c in CLASS_NAMES]
