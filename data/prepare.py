"""`vlac prepare`: tokenize every source once into indexed token shards, in parallel worker
processes, resumably.

One input unit (a tar shard, a table file, a LeRobot episode) becomes one output shard
`<data.prepared>/<component>/<unit>.{bin,idx,ext,json}`. A shard whose .json records the same
input files and the same tokenization (a digest of the modalities, the component and the data
seed) is finished and skipped, so a re-run after a kill does only the rest, and a re-run of a
finished preparation writes nothing. Tokenizers are fitted before the workers start, on the first
records of every source in unit order, so every worker (and every re-run) tokenizes alike.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .documents import BPE_CORPUS, BadSample, Tokenizers, build
from .records import SourceError, Unit, records, units
from .shards import _atomic_write, finished_shards, stored_extras, write_shard
from .tokenizers.saved import trained_tokenizer_digests

FORMAT = 1
SUPPORTED_RAW = ("text", "image", "action", "continuous")
EXAMPLES = 3  # skipped samples quoted per shard


@dataclass
class PrepareReport:
    components: dict[str, dict] = field(default_factory=dict)  # name -> documents, tokens, per modality, skipped
    written: int = 0
    skipped_shards: int = 0  # finished before this run

    def totals(self) -> dict[str, int]:
        out: Counter = Counter()
        for c in self.components.values():
            out.update(c["tokens_per_modality"])
        return dict(sorted(out.items()))


def component_dir(exp, index: int) -> Path:
    comp = exp.data.mixture[index]
    if comp.source is not None and comp.source.kind == "tokens":
        return Path(comp.source.path)
    return Path(exp.data.prepared) / comp.name


def tokenization_digest(exp, index: int) -> str:
    comp = exp.data.mixture[index]
    used = {n: exp.modalities[n].model_dump(mode="json") for n in exp.modalities}
    # the vocabulary layout follows the modalities' order, which sort_keys below would hide
    what = {"format": FORMAT, "modalities": used, "order": list(exp.modalities), "component": comp.model_dump(mode="json", exclude={"weight"}),
            "seed": exp.data.seed, "seq_len": exp.train.seq_len, "extras": stored_extras(exp), **trained_tokenizer_digests(exp)}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _inputs(unit: Unit) -> list[list]:
    return [[p, os.path.getsize(p) if os.path.exists(p) else -1] for p in unit.paths]


def is_finished(exp, unit: Unit, folder: Path) -> bool:
    meta = folder / f"{unit.stem}.json"
    if not meta.is_file():
        return False
    try:
        stats = json.loads(meta.read_text())
    except ValueError:
        return False
    return stats.get("tokenization") == tokenization_digest(exp, unit.component) and stats.get("input") == _inputs(unit)


def check_supported(exp) -> None:
    for i, comp in enumerate(exp.data.mixture):
        if comp.source is None or comp.source.kind == "tokens":
            continue
        for name in comp.modalities:
            kind = exp.modalities[name].kind
            if kind not in SUPPORTED_RAW:
                raise SourceError(f"data.mixture[{i}].source.fields.{name}: modality kind {kind!r} has no tokenizer from raw "
                                  f"data in vlac yet (supported: {', '.join(SUPPORTED_RAW)}); map a camera to an image "
                                  f"modality, or write tokens shards yourself")


# ---- workers: globals set by the parent before forking -----------------------------------------
_EXP = None
_TOK: Tokenizers | None = None


def _tokenize_unit(job: tuple[Unit, str]) -> dict:
    unit, folder = job
    exp, comp = _EXP, _EXP.data.mixture[unit.component]
    keys = [k for k, _ in stored_extras(exp)]
    docs, skipped, examples, per_mod = [], Counter(), [], Counter()
    names = list(exp.modalities)
    for rec in records(exp, unit):
        try:
            if rec.problem:
                raise BadSample(rec.problem)
            doc = build(exp, comp, rec.fields, _TOK, rec.key)
        except BadSample as e:
            if exp.data.on_bad_sample == "error":
                raise BadSample(f"{e} (data.on_bad_sample is error; set it to skip to count and skip such samples)") from None
            skipped[rec.reason or "too long"] += 1
            examples += [str(e)][: EXAMPLES - len(examples)]
            continue
        docs.append(doc)
        mods, counts = np.unique(doc[0]["modality"], return_counts=True)
        per_mod.update({(names[m] if m >= 0 else "special"): int(c) for m, c in zip(mods, counts)})
    stats = {"format": FORMAT, "component": comp.name, "input": _inputs(unit), "tokenization": tokenization_digest(exp, unit.component),
             "documents": len(docs), "tokens": int(sum(len(d[0]) for d in docs)), "tokens_per_modality": dict(sorted(per_mod.items())),
             "skipped": dict(sorted(skipped.items())), "skipped_examples": examples}
    write_shard(Path(folder) / unit.stem, docs, keys, stats)
    return stats


def _fit_records(exp, index: int, todo: list[Unit]) -> list[dict]:
    """The first good records of a component (enough to fit its VQ and BPE tokenizers)."""
    from vlac.runtime.features import VQ_FIT_IMAGES

    comp = exp.data.mixture[index]
    kinds = {exp.modalities[n].kind for n in comp.modalities}
    bpe = any(exp.modalities[n].kind == "text" and exp.modalities[n].tokenizer == "bpe" for n in comp.modalities)
    want = max(VQ_FIT_IMAGES if "image" in kinds else 0, BPE_CORPUS if bpe else 0)
    out: list[dict] = []
    for unit in todo:
        for rec in records(exp, unit):
            if len(out) >= want:
                return out
            if rec.fields is not None:
                out.append(rec.fields)
    return out


def prepare(exp, workers: int | None = None, on_unit: Callable[[dict], None] | None = None,
            start: Callable[[int], None] | None = None) -> PrepareReport:
    """Tokenize every raw source of the mixture into shards; returns what was written and found.
    `start(total_units)` and `on_unit(stats)` drive a progress display."""
    global _EXP, _TOK
    check_supported(exp)
    report = PrepareReport()
    all_units = {i: units(exp, i) for i, c in enumerate(exp.data.mixture) if c.source is not None and c.source.kind != "tokens"}
    todo = []
    for i, us in all_units.items():
        folder = component_dir(exp, i)
        folder.mkdir(parents=True, exist_ok=True)
        for u in us:
            if is_finished(exp, u, folder):
                report.skipped_shards += 1
            else:
                todo.append((u, str(folder)))
    if start:
        start(len(todo))
    if todo:
        _EXP = exp
        _TOK = Tokenizers.fit(exp, {i: _fit_records(exp, i, us) for i, us in all_units.items()})
        n = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        if n == 1:
            results = map(_tokenize_unit, todo)
            _drain(results, report, on_unit)
        else:  # fork: the workers inherit the fitted tokenizers
            with multiprocessing.get_context("fork").Pool(n) as pool:
                _drain(pool.imap(_tokenize_unit, todo), report, on_unit)
    for i in all_units:
        report.components[exp.data.mixture[i].name] = _manifest(exp, i)
    return report


def _drain(results, report: PrepareReport, on_unit) -> None:
    for stats in results:
        report.written += 1
        if on_unit:
            on_unit(stats)


def _manifest(exp, index: int) -> dict:
    """Totals of a component's finished shards, also written to its manifest.json."""
    folder = component_dir(exp, index)
    total = {"documents": 0, "tokens": 0, "tokens_per_modality": Counter(), "skipped": Counter(), "shards": 0,
             "skipped_examples": []}
    for stem in finished_shards(folder):
        s = json.loads(stem.with_suffix(".json").read_text())
        total["shards"] += 1
        total["documents"] += s["documents"]
        total["tokens"] += s["tokens"]
        total["tokens_per_modality"].update(s["tokens_per_modality"])
        total["skipped"].update(s["skipped"])
        total["skipped_examples"] += s["skipped_examples"][: EXAMPLES - len(total["skipped_examples"])]
    total["tokens_per_modality"] = dict(sorted(total["tokens_per_modality"].items()))
    total["skipped"] = dict(sorted(total["skipped"].items()))
    _atomic_write(folder / "manifest.json", json.dumps(total, sort_keys=True, indent=1).encode())
    return total
