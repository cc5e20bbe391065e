"""`vlac tokenizer train`: fit one modality's tokenizer on the spec's data and save it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from .corpus import modality_corpus
from .saved import save_text, save_vq

TEXT_LIMIT = 200_000  # texts per component a BPE is trained on
IMAGE_LIMIT = 8192  # images (or video frames) per component a VQ is trained on


def train_text(exp, name: str, folder: Path) -> dict:
    """Byte-level BPE up to the modality's vocab_size (fewer when the corpus offers fewer merges)."""
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one thread: the same merges on every run
    from vlac.runtime.tokenizers.text import new_bpe

    spec = exp.modalities[name]
    corpus = modality_corpus(exp, name, TEXT_LIMIT)
    tok = new_bpe(corpus.values, spec.vocab_size)
    report = {"texts": len(corpus.values), "by_component": corpus.by_component, "skipped": corpus.skipped,
              "vocab_size": tok.get_vocab_size()}
    save_text(folder, tok, name, report)
    return report


def train_vq(exp, name: str, folder: Path, on_step: Callable | None = None, **options) -> dict:
    """An EMA VQ on the modality's images (video: its frames), resized to the spec's image_size."""
    from vlac.runtime.features import resize

    from .ema_vq import train_ema_vq

    spec = exp.modalities[name]
    corpus = modality_corpus(exp, name, IMAGE_LIMIT)
    images = np.stack([resize(np.asarray(v, np.float32), spec.image_size, spec.channels) for v in corpus.values])
    tok, report = train_ema_vq(spec, images, seed=exp.data.seed, on_step=on_step, **options)
    report = {**report, "by_component": corpus.by_component, "skipped": corpus.skipped}
    save_vq(folder, tok, name, spec.kind, report)
    return report
