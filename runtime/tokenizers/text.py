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

    def __init__(self, corpus: tuple[str, ...] = (), vocab_size: int = 256, trained=None):
        """`trained`: a `tokenizers.Tokenizer` already trained (loaded from a spec's path)."""
        tok = trained if trained is not None else new_bpe(corpus, vocab_size)
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])


def new_bpe(corpus: Iterable[str], vocab_size: int):
    """A byte-level BPE `tokenizers.Tokenizer` trained on `corpus` (decode(encode(x)) == x)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return tok


@functools.lru_cache(maxsize=8)
def _loaded(spec: TextTokenizer, name: str) -> BPETokenizer:
    from vlac.data.tokenizers.saved import load_text

    return BPETokenizer(trained=load_text(spec, name))


@functools.lru_cache(maxsize=8)
def _bpe(corpus: tuple[str, ...], vocab_size: int) -> BPETokenizer:
    import os

    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # deterministic merges across processes
    return BPETokenizer(corpus, vocab_size)


def text_tokenizer(spec: TextTokenizer, corpus: tuple[str, ...], name: str = "text") -> ByteTokenizer | BPETokenizer:
    """The tokenizer of text modality `name`: loaded from spec.path when it has one, else (BPE)
    trained once per process on `corpus`."""
    if spec.tokenizer == "byte":
        return ByteTokenizer()
    if spec.path is not None:
        return _loaded(spec, name)
    return _bpe(corpus, spec.vocab_size)
