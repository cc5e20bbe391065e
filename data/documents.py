"""One raw record -> one document in the unified token layout, through the runtime's tokenizers
(the ones the model trains with): text by byte/BPE (`text_tokenizer`), images by the runtime's VQ
tokenizer (`image_codes`, fitted on the sources' own images), actions by binning
(`ActionTokenizer`), continuous signals as features on placeholder positions.

The layout is SyntheticData's (vlac.runtime.data) without its padding: <bos>, the component's
modalities in order (text as it is, at its own length; every discrete non-text span between its
begin/end markers; continuous placeholders), <eos>. Positions before the last modality are the
prompt (`prefix`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlac.runtime.batch import is_media, needs_video_inputs, sequence_positions
from vlac.runtime.features import VQ_FIT_IMAGES, image_codes
from vlac.runtime.tokenizers import ActionTokenizer, text_tokenizer

from .shards import FLAG_PREDICT, FLAG_PREFIX, POSITION

BPE_CORPUS = 4096  # texts per source a BPE text tokenizer is fitted on


class BadSample(ValueError):
    """A record that cannot become a document (its message names the sample and the reason)."""


class SourceImages:
    """A source's fitting images behind the `images(split)` method of the runtime's generators, so
    the runtime fits its VQ tokenizer (vlac.runtime.features) on the user's data."""

    def __init__(self, images: list[np.ndarray]):
        self._images = np.empty(len(images), dtype=object)
        self._images[:] = images

    def images(self, split: str) -> np.ndarray:
        return self._images


@dataclass
class Tokenizers:
    """What documents are tokenized with: fitted once (in the parent of `vlac prepare`'s workers)."""
    generators: dict[str, SourceImages] = field(default_factory=dict)  # VQ fitting images, by source
    corpus: tuple[str, ...] = ()  # BPE fitting texts

    @classmethod
    def fit(cls, exp, samples_by_component: dict[int, list[dict]]) -> "Tokenizers":
        """From the first records of every source (in unit order, so the same data fits the same
        tokenizers); fits the VQ of every image/video modality now."""
        gens, texts = {}, []
        for index, fields in sorted(samples_by_component.items()):
            comp = exp.data.mixture[index]
            images = [f[n] for f in fields for n in comp.modalities if exp.modalities[n].kind in ("image", "video")]
            if images:
                gens[f"source:{comp.name}"] = SourceImages(images[:VQ_FIT_IMAGES])
            texts += [f[n] for f in fields[:BPE_CORPUS] for n in comp.modalities if exp.modalities[n].kind == "text"]
        tok = cls(gens, tuple(sorted(set(texts))))
        for name, m in exp.modalities.items():
            if m.kind in ("image", "video") and gens:
                image_codes(exp, name, gens, np.zeros((m.image_size, m.image_size), np.float32))
        return tok


def build(exp, comp, fields: dict, tok: Tokenizers, where: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(positions [n] of dtype POSITION, extras by batch key) of one record."""
    layout = exp.vocab_layout()
    names = list(exp.modalities)
    rows: list[tuple[int, int, int, int]] = [(layout.special("<bos>"), -1, 0, FLAG_PREFIX)]  # (token, modality, span, flags)
    extras: dict[str, np.ndarray] = {}
    span = 0
    last = len(comp.modalities) - 1
    for order, name in enumerate(comp.modalities):
        m, mi, raw = exp.modalities[name], names.index(name), fields[name]
        prompt = FLAG_PREFIX if order != last else 0
        if is_media(exp, name):
            if m.kind == "continuous":
                extras[f"{name}.features"] = _signal(m, raw)
            else:
                extras[f"{name}.tokens"] = layout.range_of(name).offset + _codes(exp, name, m, raw, tok, where)
            continue
        if m.kind == "text":
            ids = text_tokenizer(m, tok.corpus).encode(raw)
            off = layout.range_of(name).offset
            rows += [(off + min(i, m.vocab_size - 1), mi, 0, FLAG_PREDICT | prompt) for i in ids]
            continue
        span += 1
        if m.kind == "continuous":
            n = sequence_positions(exp, name)
            extras[f"{name}.features"] = _signal(m, raw)
            extras[f"{name}.index"] = np.arange(len(rows), len(rows) + n)
            rows += [(layout.special("<pad>"), mi, span, prompt)] * n
            continue
        body = layout.range_of(name).offset + _codes(exp, name, m, raw, tok, where)
        open_, close = ("<boa>", "<eoa>") if m.kind == "action" else ("<boi>", "<eoi>")
        if needs_video_inputs(exp, name):
            extras[f"{name}.index"] = np.arange(len(rows) + 1, len(rows) + 1 + len(body))
        flags = FLAG_PREDICT | prompt
        rows += [(layout.special(open_), mi, 0, flags)] + [(int(c), mi, span, flags) for c in body]
        rows += [(layout.special(close), mi, 0, flags)]
    rows.append((layout.special("<eos>"), -1, 0, FLAG_PREDICT))
    if len(rows) > exp.train.seq_len:
        raise BadSample(f"{where}: {len(rows)} tokens exceed train.seq_len {exp.train.seq_len}; "
                        f"raise seq_len or shorten the sample")
    if span > np.iinfo(POSITION["span"]).max:
        raise BadSample(f"{where}: {span} spans in one sample exceed {np.iinfo(POSITION['span']).max}")
    return np.array(rows, dtype=POSITION), extras


def _signal(m, raw: np.ndarray) -> np.ndarray:
    """A signal as [tokens, input_dim] float32 (repeated or cut to fit, like the runtime's proprio)."""
    return np.resize(np.asarray(raw, np.float32).reshape(-1), (m.tokens, m.input_dim)).astype(np.float32)


def _codes(exp, name: str, m, raw, tok: Tokenizers, where: str) -> np.ndarray:
    if m.kind == "action":
        flat = np.asarray(raw, np.float64).reshape(-1)
        need = m.dims * m.horizon
        if flat.size < need:
            raise BadSample(f"{where}: modality {name} needs {need} action values (dims {m.dims} x horizon "
                            f"{m.horizon}), the sample has {flat.size}")
        return ActionTokenizer(m).encode(flat[:need]).astype(np.int64)
    if m.kind == "image":
        if not tok.generators:
            raise BadSample(f"{where}: no source images to fit the VQ tokenizer of {name} on")
        return np.asarray(image_codes(exp, name, tok.generators, np.asarray(raw, np.float32)), np.int64)
    raise BadSample(f"{where}: modality {name} is of kind {m.kind}, which vlac has no tokenizer for from raw "
                    f"data yet; map the camera to an image modality (or tokenize it yourself into tokens shards)")
