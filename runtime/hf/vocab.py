"""The embedding and head rows of vlac's unified vocabulary versus a text-only checkpoint's.

Import: vlac's text range (at its offset after the special tokens) holds the checkpoint's rows in
order; every other row (specials, other modalities' codes, padding) is new. New rows start at the
mean text row plus a little Gaussian noise scaled per dimension by the text rows' standard
deviation (`backbone.init.new_row_noise`, default 0.01): close to the average of what the model
already knows, so the new tokens' initial logits neither dominate nor vanish (Hewitt, 2021,
"Initializing New Word Embeddings for Pretrained Language Models", argues for the mean; the noise
breaks the symmetry between new rows). The noise of row r comes from a generator seeded by
(train.seed, tensor, r), so every layout and rank computes the same rows.

Export: text rows first (the original tokenizer's ids keep their meaning), then the rest in vlac's
order (`export_order`); the model card lists where each range went.
"""

from __future__ import annotations

import torch

from vlac.spec import Experiment
from vlac.spec.pretrained import text_modality

from .reader import CheckpointReader

CHUNK_ROWS = 4096  # rows read at a time for the text statistics (bounded memory)
STREAMS = {"embed.weight": 1, "head.weight": 2}


def text_range(exp: Experiment) -> tuple[int, int]:
    """(offset, rows) of the text range in vlac's vocabulary."""
    r = exp.vocab_layout().range_of(text_modality(exp.modalities))
    return r.offset, r.size


def row_stats(reader: CheckpointReader, name: str, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation of the first `rows` rows, read in chunks (float64)."""
    total = sq = None
    for start in range(0, rows, CHUNK_ROWS):
        chunk = reader.read(name, (slice(start, min(rows, start + CHUNK_ROWS)), slice(None))).double()
        total = chunk.sum(0) if total is None else total + chunk.sum(0)
        sq = chunk.pow(2).sum(0) if sq is None else sq + chunk.pow(2).sum(0)
    mean = total / rows
    return mean, (sq / rows - mean.pow(2)).clamp_min(0).sqrt()


def new_rows(rows: range, cols: slice, stats: tuple[torch.Tensor, torch.Tensor], noise: float, seed: int,
             stream: int) -> torch.Tensor:
    mean, std = stats
    out = torch.empty(len(rows), mean.numel(), dtype=torch.float64)
    for i, r in enumerate(rows):
        g = torch.Generator().manual_seed((seed * 1_000_003 + stream) * 1_000_000_007 + r)
        out[i] = mean + noise * std * torch.randn(mean.numel(), generator=g, dtype=torch.float64)
    return out[:, cols]


def read_rows(reader: CheckpointReader, hf_name: str, vlac_name: str, exp: Experiment,
              region: tuple[slice, slice], stats_cache: dict) -> torch.Tensor:
    """Rows `region[0]`, columns `region[1]` of vlac's embedding/head built from the checkpoint."""
    offset, size = text_range(exp)
    rows, cols = region
    hf_rows = reader.shape(hf_name)[0]
    if hf_rows < size:
        raise ValueError(f"modalities.{text_modality(exp.modalities)}.vocab_size: {size} exceeds the checkpoint's "
                         f"{hf_rows} rows of {hf_name}; use vocab_size <= {hf_rows}")
    if hf_name not in stats_cache:
        stats_cache[hf_name] = row_stats(reader, hf_name, size)
    width = stats_cache[hf_name][0].numel()
    out = torch.empty(rows.stop - rows.start, len(range(width)[cols]), dtype=torch.float64)
    lo, hi = max(rows.start, offset), min(rows.stop, offset + size)  # overlap with the text range
    if lo < hi:
        out[lo - rows.start:hi - rows.start] = reader.read(hf_name, (slice(lo - offset, hi - offset), cols)).double()
    init = exp.backbone.init
    for a, b in ((rows.start, min(rows.stop, offset)), (max(rows.start, offset + size), rows.stop)):
        if a < b:
            out[a - rows.start:b - rows.start] = new_rows(range(a, b), cols, stats_cache[hf_name], init.new_row_noise,
                                                          exp.train.seed, STREAMS[vlac_name])
    return out


def export_order(exp: Experiment) -> list[int]:
    """vlac row index of each exported row: the text range first, then every other row in order."""
    offset, size = text_range(exp)
    padded = exp.vocab_layout().padded
    return list(range(offset, offset + size)) + list(range(offset)) + list(range(offset + size, padded))


def exported_layout(exp: Experiment) -> list[tuple[str, int, int]]:
    """(what, first exported id, rows) of each range of the exported vocabulary, in id order."""
    layout = exp.vocab_layout()
    exported_id = {v: i for i, v in enumerate(export_order(exp))}
    text = text_modality(exp.modalities)
    out = [(f"{r.modality} (the checkpoint's text tokens)" if r.modality == text else r.modality,
            exported_id[r.offset], r.size) for r in layout.ranges]
    if layout.specials:
        out.append(("special tokens " + " ".join(layout.specials), exported_id[0], len(layout.specials)))
    if layout.padded > layout.size:
        out.append(("padding (never a target)", exported_id[layout.size], layout.padded - layout.size))
    return sorted(out, key=lambda entry: entry[1])
