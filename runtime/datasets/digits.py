"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, shipped inside the package, no
download) with a caption or a question per sample. Every fifth image is held out for `eval`."""

from __future__ import annotations

import functools

import numpy as np

from . import Episode
from .synthetic import CLASS_NAMES

QUESTIONS = ("digit?", "odd?", "big?")  # the class word; odd or even; greater than four


def answer(question: str, digit: int) -> str:
    if question == "digit?":
        return CLASS_NAMES[digit]
    if question == "odd?":
        return "yes" if digit % 2 else "no"
    return "yes" if digit > 4 else "no"


@functools.lru_cache(maxsize=1)
def load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def split_indices(split: str) -> np.ndarray:
    n = len(load()[1])
    held_out = np.arange(n) % 5 == 0
    return np.flatnonzero(held_out if split == "eval" else ~held_out)


class DigitsGenerator:
    classes = 10

    def __init__(self, seed: int):
        self.seed = seed

    def episode(self, rng: np.random.Generator, split: str) -> Episode:
        images, labels = load()
        i = int(rng.choice(split_indices(split)))
        digit = int(labels[i])
        if rng.random() < 0.5:  # a caption
            return Episode(label=digit, answer=CLASS_NAMES[digit], image=images[i])
        q = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
        return Episode(label=digit, prompt=q, answer=answer(q, digit), image=images[i])

    def images(self, split: str = "train") -> np.ndarray:
        return load()[0][split_indices(split)]

    def corpus(self) -> list[str]:
        return list(CLASS_NAMES) + [f"{q} {answer(q, d)}" for q in QUESTIONS for d in range(10)]
