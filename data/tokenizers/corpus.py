"""What a modality's tokenizer is trained on: the values of that modality in every mixture
component that carries it — read from the component's source (the readers of vlac.data.records),
or taken from its built-in generator when it has none. Values come in component and unit order,
so the same data trains the same tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Corpus:
    values: list = field(default_factory=list)  # str for text; [H, W] images in [0, 1] otherwise
    by_component: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # unreadable records, by reason


def _source_values(exp, index: int, name: str, limit: int, out: Corpus) -> list:
    from vlac.data.records import records, units

    got: list = []
    for unit in units(exp, index):
        for rec in records(exp, unit):
            if rec.fields is None:
                out.skipped[rec.reason] = out.skipped.get(rec.reason, 0) + 1
                continue
            value = rec.fields[name]
            got += list(value) if isinstance(value, np.ndarray) and value.ndim == 3 else [value]  # video: frames
            if len(got) >= limit:
                return got[:limit]
    return got


def _generator_values(exp, generator: str, kind: str, limit: int) -> list:
    from vlac.runtime.datasets import make_generator

    g = make_generator(generator, exp.data.seed)
    if kind == "text":
        return sorted(set(g.corpus()))[:limit]
    if hasattr(g, "images"):
        return list(g.images("train")[:limit])
    rng = np.random.default_rng([exp.data.seed, 7])
    episodes = (g.episode(rng, "train") for _ in range(limit))
    return [ep.image for ep in episodes if getattr(ep, "image", None) is not None]


def modality_corpus(exp, name: str, limit: int) -> Corpus:
    """Up to `limit` values of modality `name` from each component that carries it."""
    if name not in exp.modalities:
        raise ValueError(f"--modality: {name!r} is not a modality of the spec; choose one of {sorted(exp.modalities)}")
    kind = exp.modalities[name].kind
    out = Corpus()
    for index, comp in enumerate(exp.data.mixture):
        if name not in comp.modalities:
            continue
        source = getattr(comp, "source", None)
        if source is not None and source.kind == "tokens":
            continue  # already tokenized: nothing raw to learn from
        got = (_source_values(exp, index, name, limit, out) if source is not None
               else _generator_values(exp, comp.generator, kind, limit))
        out.by_component[comp.name] = len(got)
        out.values += got
    if not out.values:
        raise ValueError(f"--modality {name}: no mixture component yields any {kind} values to train on "
                         f"(components carrying it: {[c.name for c in exp.data.mixture if name in c.modalities]})")
    return out
