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

from .names import EMBED, HEAD
from .reader import CheckpointReader

CHUNK_ROWS = 4096  # rows read at a time for the text statistics (bounded memory)
# noise stream per checkpoint tensor: a tied head is the embedding's rows (both pipeline copies alike)
STREAMS = {EMBED: 1, HEAD: 2}


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
        g = torch.Generator().manual_seed(((seed * 1_000_003 + stream) * 1_000_000_007 + r) % (1 << 63))
        out[i] = mean + noise * std * torch.randn(mean.numel(), generator=g, dtype=torch.float64)
    return out[:, cols]


def source_rows(exp: Experiment, cfg: dict) -> list[int]:
    """Checkpoint row of each vlac row (-1: a new row). The text range maps to the checkpoint's
    first rows; a checkpoint vlac exported from an experiment of the same vocabulary layout (its
    config's `vlac_vocab_layout`) gives back every row, the added ones included."""
    padded = exp.vocab_layout().padded
    if cfg.get("vlac_vocab_layout") == [list(entry) for entry in exported_layout(exp)]:
        return _inverse(export_order(exp), padded)
    offset, size = text_range(exp)
    return [r - offset if offset <= r < offset + size else -1 for r in range(padded)]


def _inverse(order: list[int], n: int) -> list[int]:
    out = [-1] * n
    for exported, vlac_row in enumerate(order):
        out[vlac_row] = exported
    return out


def read_rows(reader: CheckpointReader, hf_name: str, exp: Experiment, rows_from: list[int],
              region: tuple[slice, slice], stats_cache: dict) -> torch.Tensor:
    """Rows `region[0]`, columns `region[1]` of vlac's embedding/head built from the checkpoint
    (`rows_from`: see source_rows); runs of consecutive checkpoint rows are read as one slice."""
    _, size = text_range(exp)
    rows, cols = region
    if hf_name not in stats_cache:
        stats_cache[hf_name] = row_stats(reader, hf_name, size)
    width = stats_cache[hf_name][0].numel()
    out = torch.empty(rows.stop - rows.start, len(range(width)[cols]), dtype=torch.float64)
    r = rows.start
    while r < rows.stop:
        end = r + 1
        if rows_from[r] >= 0:
            while end < rows.stop and rows_from[end] == rows_from[end - 1] + 1:
                end += 1
            piece = reader.read(hf_name, (slice(rows_from[r], rows_from[end - 1] + 1), cols))
            out[r - rows.start:end - rows.start] = piece.double()
        else:
            while end < rows.stop and rows_from[end] < 0:
                end += 1
            out[r - rows.start:end - rows.start] = new_rows(range(r, end), cols, stats_cache[hf_name],
                                                            exp.backbone.init.new_row_noise, exp.train.seed,
                                                            STREAMS[hf_name])
        r = end
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
