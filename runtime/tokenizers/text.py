"""Text tokenizers: byte-level (vocab 256), or BPE trained with the `tokenizers` library on the
text the project ships (the captions, questions and instructions of vlac.runtime.datasets)."""

from __future__ import annotations

import functools
from typing import Iterable

from vlac.spec.modalities import TextTokenizer


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class BPETokenizer:
    """Byte-level BPE trained on `corpus` up to `vocab_size` entries (fewer when the corpus has
    fewer merges to offer). Training is single-threaded so every process gets the same merges."""

    def __init__(self, corpus: tuple[str, ...], vocab_size: int):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(list(corpus), trainer=trainer)
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])


@functools.lru_cache(maxsize=8)
def _bpe(corpus: tuple[str, ...], vocab_size: int) -> BPETokenizer:
    import os

    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # deterministic merges across processes
    return BPETokenizer(corpus, vocab_size)


def text_tokenizer(spec: TextTokenizer, corpus: tuple[str, ...]) -> ByteTokenizer | BPETokenizer:
    """The tokenizer of a text modality; BPE ones are trained once per process on `corpus`."""
    if spec.tokenizer == "byte":
        return ByteTokenizer()
    return _bpe(corpus, spec.vocab_size)
