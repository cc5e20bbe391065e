"""Small real data without downloads, and the procedural fallback.

A generator turns (rng, split) into an `Episode` of raw signals: text (a prompt and its answer),
a grayscale image, continuous actions, a proprioceptive state. `vlac.runtime.data` tokenizes
them per modality; a modality an episode does not carry is filled by the synthetic generator,
from the episode's label, so every mixture component of every spec yields complete samples.

- synthetic: a latent class decides every modality (learnable structure, no external data);
- digits: scikit-learn's bundled 8x8 handwritten digits with captions and questions;
- cartpole: a scripted controller balancing gymnasium's CartPole at a commanded position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Episode:
    label: int
    prompt: str = ""
    answer: str = ""
    image: np.ndarray | None = None  # [H, W] in [0, 1]
    actions: np.ndarray | None = None  # [steps, ...] continuous, flattened in order by the tokenizer
    state: np.ndarray | None = None  # proprioception


SPLITS = ("train", "eval")


def make_generator(kind: str, seed: int):
    from .cartpole import CartPoleGenerator
    from .digits import DigitsGenerator
    from .synthetic import SyntheticGenerator

    table = {"synthetic": SyntheticGenerator, "digits": DigitsGenerator, "cartpole": CartPoleGenerator}
    if kind not in table:
        raise ValueError(f"data generator {kind!r} is unknown; choose from {sorted(table)}")
    return table[kind](seed)
