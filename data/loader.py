"""The loader the emitted program trains with on prepared token shards: packed sequences of whole
documents, the batch contract of vlac.runtime.batch plus `document` (1, 2, ... per document of a
row, 0 on padding) from which the model builds a block-diagonal mask.

Packed sequence i is a pure function of (seed, i) (vlac.data.packing), so the trainer's split of a
global batch over data-parallel ranks and micro-batches sees the same rows in every layout, and
resuming at step s continues at sequence s x global_batch. A background thread builds the next
step's micro-batches while the current one trains.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from vlac.runtime.data import IGNORE, extra_shapes, next_token_targets

from .packing import ComponentPlan, MixturePlan
from .prepare import component_dir, tokenization_digest
from .shards import FLAG_PREDICT, FLAG_PREFIX, Shard, finished_shards, stored_extras
from .split import SPLITS, document_hashes, held_out

PREFETCH_STEPS = 2


class DataNotPrepared(ValueError):
    """No (or stale) shards for a component; the message says to run `vlac prepare`."""


class Component:
    """The finished shards of one mixture component, the documents of one split (vlac.data.split),
    and their packing plan."""

    def __init__(self, exp, index: int, split: str = "train"):
        comp = exp.data.mixture[index]
        folder = component_dir(exp, index)
        where = f"data.mixture[{index}] ({comp.name})"
        stems = finished_shards(folder)
        if not stems:
            raise DataNotPrepared(f"{where}: no prepared token shards in {folder}; run `vlac prepare SPEC` first")
        if comp.source.kind != "tokens":
            digest = tokenization_digest(exp, index)
            stale = [s.name for s in stems if json.loads(s.with_suffix(".json").read_text()).get("tokenization") != digest]
            if stale:
                raise DataNotPrepared(f"{where}: shards {stale[:3]} in {folder} were tokenized for another spec "
                                      f"(modalities, component or seed changed); run `vlac prepare SPEC` again")
        self.shards = [Shard.open(s) for s in stems]
        lengths = [s.lengths for s in self.shards]
        if not sum(len(x) for x in lengths):
            raise DataNotPrepared(f"{where}: the shards in {folder} hold no documents (every sample was skipped?)")
        if sum(len(x) for x in lengths) < 2:
            raise DataNotPrepared(f"{where}: the shards in {folder} hold one document, which cannot be split into "
                                  f"training and held-out evaluation; add data to this source")
        held = held_out(np.concatenate([document_hashes(comp.name, st, len(x)) for st, x in zip(stems, lengths)]))
        keep = held if split == "eval" else ~held
        self.shard_of = np.concatenate([np.full(len(x), k) for k, x in enumerate(lengths)]).astype(np.int64)[keep]
        self.local = np.concatenate([np.arange(len(x)) for x in lengths]).astype(np.int64)[keep]
        self.lengths = np.concatenate(lengths)[keep]
        has_extras = np.concatenate([s.masks != 0 for s in self.shards])[keep]
        self.plan = ComponentPlan(self.lengths, has_extras, exp.train.seq_len, exp.data.seed, index)
        self.fingerprint = hashlib.sha256(self.lengths.tobytes() + "/".join(s.name for s in stems).encode()).hexdigest()[:16]


class PackedData:
    """Packed rows of one split: "train" (what training sees) or "eval" (the held-out documents)."""

    def __init__(self, exp, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: choose one of {list(SPLITS)}")
        self.exp, self.split = exp, split
        self.seq_len = exp.train.seq_len
        self.layout = exp.vocab_layout()
        self.names = list(exp.modalities)
        self.mask_prompt = bool(exp.losses.ar and exp.losses.ar.mask_prompt)
        sourceless = [i for i, c in enumerate(exp.data.mixture) if c.source is None]
        if sourceless:
            raise DataNotPrepared(f"data.mixture[{sourceless[0]}]: has a generator but no source; a mixture with sources "
                                  f"needs one in every component (tokenize generated data into tokens shards)")
        self.components = [Component(exp, i, split) for i in range(len(exp.data.mixture))]
        self.mixture = MixturePlan([c.weight for c in exp.data.mixture], exp.data.seed)
        self.stored = stored_extras(exp)
        self.shapes = extra_shapes(exp)
        self.tokens = Counter()  # (component, modality) -> positions trained on by this rank
        self.rows = 0
        self._lock = threading.Lock()  # the plans' epoch caches are filled by both threads
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vlac-data")
        self._ahead: dict[tuple[int, int, int], Future] = {}

    # ---- one packed row ------------------------------------------------------------------------
    def locate(self, i: int) -> tuple[int, int, list[tuple[int, int]]]:
        """(component, epoch, [(shard, document)]) of packed sequence i."""
        with self._lock:
            comp, k = self.mixture.locate(i)
            c = self.components[comp]
            epoch, docs = c.plan.row(k)
        return comp, epoch, [(int(c.shard_of[d]), int(c.local[d])) for d in docs]

    def row(self, i: int) -> dict[str, np.ndarray]:
        comp, _, docs = self.locate(i)
        c = self.components[comp]
        parts, extras, doc_ids, span_base = [], {}, [], 0
        for n, (s, d) in enumerate(docs, start=1):
            shard = c.shards[s]
            pos = np.asarray(shard.document(d))
            start = sum(len(p) for p in parts)
            for key, value in shard.document_extras(d, self.stored).items():
                extras[key] = value + start if key.endswith(".index") else value
            span = pos["span"].astype(np.int64)
            parts.append(np.rec.fromarrays([pos["token"], pos["modality"], pos["flags"], np.where(span > 0, span + span_base, 0)],
                                           names="token,modality,flags,span"))
            span_base += int(span.max(initial=0))
            doc_ids.append(np.full(len(pos), n))
        used = sum(len(p) for p in parts)
        pad = self.seq_len - used
        tokens = np.concatenate([p["token"] for p in parts] + [np.full(pad, self.layout.special("<pad>"))]).astype(np.int64)
        modality = np.concatenate([p["modality"] for p in parts] + [np.full(pad, -1)]).astype(np.int64)
        flags = np.concatenate([p["flags"] for p in parts] + [np.zeros(pad)]).astype(np.int64)
        predictable, prefix = (flags & FLAG_PREDICT) > 0, ((flags & FLAG_PREFIX) > 0).astype(np.int64)
        targets, target_mod = next_token_targets(tokens, modality, predictable, prefix, self.layout.special("<pad>"),
                                                 self.mask_prompt)
        out = {"tokens": tokens, "targets": targets, "target_modality": target_mod, "modality": modality, "prefix": prefix,
               "span": np.concatenate([p["span"] for p in parts] + [np.zeros(pad)]).astype(np.int64),
               "document": np.concatenate(doc_ids + [np.zeros(pad)]).astype(np.int64),
               "component": comp, "used": used}
        out.update(extras)
        return out

    # ---- batches (the interface of vlac.runtime.data.SyntheticData) --------------------------------
    def _build(self, first: int, size: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        rows = [self.row(first + k) for k in range(size)]
        batch = {k: torch.from_numpy(np.stack([r[k] for r in rows]))
                 for k in ("tokens", "targets", "target_modality", "span", "prefix", "modality", "document")}
        batch["sample"] = torch.arange(first, first + size, dtype=torch.long)
        for key, (shape, kind) in self.shapes.items():
            name, fld = key.rsplit(".", 1)
            arr = np.zeros((size, *shape), np.int64 if kind == "long" else np.float32)
            for j, r in enumerate(rows):
                if fld == "present":
                    arr[j] = float(any(k.startswith(name + ".") for k in r))
                elif fld == "flow_time":
                    arr[j] = 1.0
                elif key in r:
                    arr[j] = r[key]
            t = torch.from_numpy(arr)
            batch[key] = t if kind == "long" else t.to(dtype)
        batch["_rows"] = [(r["component"], r["modality"][: r["used"]]) for r in rows]
        return batch

    def micro_batch(self, step: int, first: int, size: int, loss_norm: float, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Packed sequences step*global_batch + first .. + size-1 as one batch (prefetched)."""
        g = self.exp.train.global_batch
        key = (step, first, size)
        fut = self._ahead.pop(key, None)
        batch = fut.result() if fut is not None else self._build(step * g + first, size, dtype)
        for ahead in range(1, PREFETCH_STEPS + 1):  # the same slice of the next steps, in the background
            nxt = (step + ahead, first, size)
            if nxt not in self._ahead:
                self._ahead[nxt] = self._pool.submit(self._build, (step + ahead) * g + first, size, dtype)
        self._account(batch.pop("_rows"))
        batch["loss_norm"] = torch.tensor(float(loss_norm))
        return {k: v.to(device) for k, v in batch.items()}

    def _account(self, rows) -> None:
        for comp, modality in rows:
            self.rows += 1
            mods, counts = np.unique(modality, return_counts=True)
            for m, n in zip(mods, counts):
                self.tokens[(comp, self.names[m] if m >= 0 else "special")] += int(n)

    def global_loss_tokens(self, step: int) -> int:
        g = self.exp.train.global_batch
        return sum(int((self.row(step * g + k)["targets"] != IGNORE).sum()) for k in range(g))

    # ---- state, report ----------------------------------------------------------------------------
    def state(self, step: int) -> dict:
        """What a checkpoint records: the next sequence, each component's epoch there, and the
        fingerprint of the data, so a resume on different shards is refused."""
        nxt = step * self.exp.train.global_batch
        epochs = {}
        with self._lock:
            for ci, c in enumerate(self.components):
                epochs[self.exp.data.mixture[ci].name] = c.plan.row(self.mixture.rows_before(ci, nxt))[0]
        return {"next_sequence": nxt, "seed": self.exp.data.seed, "epochs": epochs,
                "fingerprints": {self.exp.data.mixture[i].name: c.fingerprint for i, c in enumerate(self.components)}}

    def check_state(self, state: dict | None, step: int) -> None:
        """Refuse to resume on other data than the checkpoint's (a silent change would repeat or skip samples)."""
        if not state:
            return
        now = self.state(step)
        if state.get("fingerprints") != now["fingerprints"] or state.get("next_sequence") != now["next_sequence"]:
            raise DataNotPrepared(f"the checkpoint was trained on other prepared data (fingerprints {state.get('fingerprints')}, "
                                  f"now {now['fingerprints']}); resume with the same shards, or start a new run folder")

    def report(self) -> dict:
        """This rank's packing efficiency and tokens trained on, per source and modality."""
        total = self.rows * self.seq_len
        real = sum(n for (_, m), n in self.tokens.items())
        per_source: dict[str, dict[str, int]] = {}
        for (comp, mod), n in sorted(self.tokens.items()):
            per_source.setdefault(self.exp.data.mixture[comp].name, {})[mod] = n
        skipped = self._skipped()
        return {"event": "data", "packing_efficiency": real / total if total else 0.0, "rows": self.rows,
                "tokens_per_source": per_source, "skipped_in_prepare": skipped,
                "skipped_total": sum(sum(c.values()) for c in skipped.values())}

    @staticmethod
    def report_line(report: dict) -> str:
        """One line of a report() for the end of a run."""
        tokens = ", ".join(f"{name} {sum(mods.values()):,}" for name, mods in report["tokens_per_source"].items())
        skipped = "; ".join(f"{name}: {', '.join(f'{n} {why}' for why, n in c.items())}"
                            for name, c in report["skipped_in_prepare"].items() if c)
        return (f"data: packing efficiency {report['packing_efficiency']:.1%} over {report['rows']:,} rows "
                f"(tokens {tokens or 'none'}); skipped samples {report['skipped_total']:,}"
                + (f" ({skipped})" if skipped else ""))

    def _skipped(self) -> dict[str, dict[str, int]]:
        out = {}
        for i, c in enumerate(self.exp.data.mixture):
            manifest = component_dir(self.exp, i) / "manifest.json"
            if manifest.is_file():
                out[c.name] = json.loads(manifest.read_text()).get("skipped", {})
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
