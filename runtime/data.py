"""Samples and batches in the unified token layout.

Every sample is one mixture component's modalities in order: <bos>, text tokens as they are,
each discrete non-text span wrapped in its begin/end markers, continuous signals on reserved
placeholder positions, <eos>; late-fusion context modalities go beside the sequence (see
vlac.runtime.batch). Samples are a pure function of (seed, split, sample index), so any split of
a global batch over data-parallel ranks and micro-batches sees exactly the same data: the basis
of the single-process equivalence checks.

Where the content comes from is the component's `generator` (vlac.runtime.datasets); the
tokenizers of vlac.runtime.tokenizers turn it into tokens: text by byte or BPE, images by a VQ
tokenizer fitted (once per process, deterministically) on the mixture's images, actions by
binning, images for `vit_features` modalities by a frozen random patch encoder, or as normalised
pixels when a pretrained vision tower computes the features in the run (`encoder`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vlac.spec import Experiment

from .batch import (POSE_DIM, batch_keys, continuous_input, example_batch, is_media, needs_video_inputs,
                    sequence_positions)
from .datasets import Episode, make_generator
from .features import image_codes, patch_features
from .hf.pixels import tower_pixels
from .tokenizers import ActionTokenizer, text_tokenizer

IGNORE = -100
NOISE = 0.1


@dataclass
class Sample:
    tokens: np.ndarray  # [S] int64
    modality: np.ndarray  # [S] modality index of each position (-1: special or padding)
    predictable: np.ndarray  # [S] bool: a discrete token a model can be asked to predict
    span: np.ndarray  # [S] id of the non-text span a position is in (0: none)
    prefix: np.ndarray  # [S] 1 on prompt positions (every modality but the last)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # per-modality batch entries
    episode: Episode | None = None
    answer_start: int = -1  # sequence position of the first answer token of the last text span
    index: int = -1  # the sample's global index (batch["sample"]); -1 for one built outside the data order


class SyntheticData:
    """The data of an experiment's mixture (the historical name: the synthetic generator is one
    of several). `split` selects training or held-out episodes of the real-data generators."""

    def __init__(self, exp: Experiment, split: str = "train"):
        self.exp = exp
        self.split = split
        self.layout = exp.vocab_layout()
        self.names = list(exp.modalities)
        self.seq_len = exp.train.seq_len
        weights = np.array([c.weight for c in exp.data.mixture], dtype=np.float64)
        self.cum = np.cumsum(weights / weights.sum())
        self.mask_prompt = bool(exp.losses.ar and exp.losses.ar.mask_prompt)
        self.generators = {c.generator: make_generator(c.generator, exp.data.seed) for c in exp.data.mixture}
        corpus = tuple(sorted({t for g in self.generators.values() for t in g.corpus()}))
        self.text = {n: text_tokenizer(m, corpus, n) for n, m in exp.modalities.items() if m.kind == "text"}
        self.keys = batch_keys(exp)
        self.shapes = extra_shapes(exp)

    # ---- one sample ----------------------------------------------------------------------
    def sample(self, index: int) -> Sample:
        rng = np.random.default_rng([self.exp.data.seed, index, int(self.split == "eval")])
        u = rng.random()
        comp = self.exp.data.mixture[int(np.searchsorted(self.cum, u, side="right").clip(max=len(self.cum) - 1))]
        ep = self.generators[comp.generator].episode(rng, self.split)
        L = self.layout
        toks, mods, pred, spans, prefix = [L.special("<bos>")], [-1], [False], [0], [1]
        extras: dict[str, np.ndarray] = {}
        texts = [n for n in comp.modalities if self.exp.modalities[n].kind == "text"]
        answer_start = -1
        last = len(comp.modalities) - 1
        span_id = 0
        for order, name in enumerate(comp.modalities):
            m = self.exp.modalities[name]
            mi = self.names.index(name)
            is_prompt = int(order != last)
            if is_media(self.exp, name):
                self._media(name, m, ep, rng, extras)
                continue
            if m.kind == "text":
                ids, answer_at = self._text(name, m, ep, texts)
                if order == last or name == texts[-1]:
                    answer_start = len(toks) + answer_at if answer_at >= 0 else -1
                real = [i >= 0 for i in ids]
                toks += [L.range_of(name).offset + i if i >= 0 else L.special("<pad>") for i in ids]
                mods += [mi if r else -1 for r in real]
                pred += real
                spans += [0] * len(ids)
                prefix += [is_prompt] * len(ids)
                continue
            if m.kind == "continuous":
                n = sequence_positions(self.exp, name)
                start = len(toks)
                extras[continuous_input(self.exp, name)] = self._continuous(name, m, ep, rng)
                extras[f"{name}.index"] = np.arange(start, start + n)
                span_id += 1
                toks += [L.special("<pad>")] * n
                mods += [mi] * n
                pred += [False] * n
                spans += [span_id] * n
                prefix += [is_prompt] * n
                continue
            body = self._discrete(name, m, ep, rng)
            span_id += 1
            open_, close = ("<boa>", "<eoa>") if m.kind == "action" else ("<boi>", "<eoi>")
            if needs_video_inputs(self.exp, name):
                extras[f"{name}.index"] = np.arange(len(toks) + 1, len(toks) + 1 + len(body))
                extras[f"{name}.pose"] = self._pose(m, ep, rng)
            toks += [L.special(open_)] + [L.range_of(name).offset + int(c) for c in body] + [L.special(close)]
            mods += [mi] * (len(body) + 2)
            pred += [True] * (len(body) + 2)
            spans += [0] + [span_id] * len(body) + [0]
            prefix += [is_prompt] * (len(body) + 2)
        toks.append(L.special("<eos>"))
        mods.append(-1)
        pred.append(True)
        spans.append(0)
        prefix.append(0)
        pad = self.seq_len - len(toks)
        if pad < 0:
            raise ValueError(f"a {comp.name} sample needs {len(toks)} positions but train.seq_len is {self.seq_len}; "
                             f"raise train.seq_len to {len(toks)}")
        toks += [L.special("<pad>")] * pad
        mods += [-1] * pad
        pred += [False] * pad
        spans += [0] * pad
        prefix += [0] * pad
        return Sample(np.array(toks), np.array(mods), np.array(pred), np.array(spans), np.array(prefix),
                      extras, ep, answer_start, index)

    def _text(self, name, m, ep: Episode, texts: list[str]) -> tuple[list[int], int]:
        """Token ids within the modality's range (-1 = padding) and where the answer starts
        (-1: no answer in this span). One text modality carries "prompt answer"; with several,
        the first carries the prompt and the last the answer."""
        tok = self.text[name]
        if len(texts) == 1:
            head = f"{ep.prompt} " if ep.prompt else ""
            body = head + ep.answer
            ids, answer_at = tok.encode(body), len(tok.encode(head)) if ep.answer else -1
        elif name == texts[0]:
            ids, answer_at = tok.encode(ep.prompt), -1
        elif name == texts[-1]:
            ids, answer_at = tok.encode(ep.answer), 0
        else:
            ids, answer_at = [], -1
        if not ids:  # nothing of this episode fits a second text slot: the synthetic caption
            ids = tok.encode(ep.answer or f"class {ep.label}")
        if ep.image is None and ep.actions is None and len(ids) < m.tokens and len(texts) == 1 and not ep.prompt:
            ids = (ids + tok.encode(" ")) * (m.tokens // (len(ids) + 1) + 1)  # synthetic: repeat the caption
        ids = [min(i, m.vocab_size - 1) for i in ids[: m.tokens]]
        answer_at = answer_at if 0 <= answer_at < len(ids) else -1
        return ids + [-1] * (m.tokens - len(ids)), answer_at

    def _discrete(self, name, m, ep: Episode, rng) -> list[int]:
        size = self.layout.range_of(name).size
        if m.kind == "action":
            if ep.actions is not None:
                need = m.dims * m.horizon
                acts = np.resize(ep.actions.reshape(-1), need) if ep.actions.size < need else ep.actions.reshape(-1)[:need]
                return ActionTokenizer(m).encode(acts).tolist()
            return [(ep.label * (d + 2) + h * 3) % m.bins for h in range(m.horizon) for d in range(m.dims)]
        if m.kind == "image" and ep.image is not None:
            return image_codes(self.exp, name, self.generators, ep.image).tolist()
        return _label_codes(ep.label, m.tokens, size, rng)

    def _continuous(self, name, m, ep: Episode, rng) -> np.ndarray:
        if m.encoder is not None:  # pixels for the vision tower ([channels, size, size], normalised)
            if ep.image is not None:
                return tower_pixels(ep.image, m.encoder.hf)
            return rng.normal(ep.label / 10.0, NOISE, size=self.shapes[f"{name}.pixels"][0]).astype(np.float32)
        if m.signal == "vit_features" and ep.image is not None:
            return patch_features(ep.image, m.tokens, m.input_dim)
        if m.signal == "proprio" and ep.state is not None:
            return np.resize(ep.state, (m.tokens, m.input_dim)).astype(np.float32)
        return rng.normal(ep.label / 10.0, NOISE, size=(m.tokens, m.input_dim)).astype(np.float32)

    def _pose(self, m, ep: Episode, rng) -> np.ndarray:
        """Camera extrinsics [cameras, 12]: cameras on a circle around the scene, with jitter."""
        out = np.zeros((m.cameras, POSE_DIM), np.float32)
        for c in range(m.cameras):
            yaw = 2 * np.pi * c / m.cameras + rng.normal(0, 0.05)
            rot = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
            out[c] = np.concatenate([rot, [[np.cos(yaw)], [np.sin(yaw)], [1.0]]], axis=1).reshape(-1)
        return out

    def _media(self, name, m, ep: Episode, rng, extras) -> None:
        if m.kind == "continuous":
            extras[continuous_input(self.exp, name)] = self._continuous(name, m, ep, rng)
        else:
            extras[f"{name}.tokens"] = self.layout.range_of(name).offset + np.array(self._discrete(name, m, ep, rng))
            if m.kind == "video":
                extras[f"{name}.pose"] = self._pose(m, ep, rng)

    # ---- batches ---------------------------------------------------------------------------
    def targets(self, s: Sample) -> tuple[np.ndarray, np.ndarray]:
        """Next-token targets and their modality; no loss on padding, continuous placeholders,
        the <bos> prediction, or (with prompt masking) on prompt modalities. <eos> is charged to
        the modality it ends."""
        return next_token_targets(s.tokens, s.modality, s.predictable, s.prefix, self.layout.special("<pad>"),
                                  self.mask_prompt)

    def global_loss_tokens(self, step: int) -> int:
        """Target tokens of the whole global batch of `step`, built here sample by sample: for a
        single process that trains on the whole batch at once (tests, references). The trainer
        counts only its own micro-batches (`loss_tokens`) and sums over the replicas instead."""
        g = self.exp.train.global_batch
        return sum(int((self.targets(self.sample(step * g + i))[0] != IGNORE).sum()) for i in range(g))

    def micro_batch(self, step: int, first: int, size: int, loss_norm: float, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Samples step*global_batch + first .. + first+size-1 as one batch."""
        base = step * self.exp.train.global_batch + first
        return self.collate([self.sample(base + i) for i in range(size)], loss_norm, device, dtype)

    def collate(self, samples: list[Sample], loss_norm: float, device, dtype=torch.float32) -> dict[str, torch.Tensor]:
        tg = [self.targets(s) for s in samples]
        batch = {
            "tokens": _stack([s.tokens for s in samples]),
            "targets": _stack([t[0] for t in tg]),
            "target_modality": _stack([t[1] for t in tg]),
            "span": _stack([s.span for s in samples]),
            "prefix": _stack([s.prefix for s in samples]),
            "modality": _stack([s.modality for s in samples]),
            "sample": torch.tensor([s.index for s in samples], dtype=torch.long),
            "loss_norm": torch.tensor(float(loss_norm)),
        }
        for key, (shape, kind) in self.shapes.items():
            if key in batch:
                continue
            name, fld = key.rsplit(".", 1)
            arr = np.zeros((len(samples), *shape), np.int64 if kind == "long" else np.float32)
            for i, s in enumerate(samples):
                if fld == "present":
                    arr[i] = float(any(k.startswith(name + ".") for k in s.extras))
                elif fld == "flow_time":
                    arr[i] = 1.0
                elif key in s.extras:
                    arr[i] = s.extras[key]
            t = torch.from_numpy(arr)
            batch[key] = t if kind == "long" else t.to(dtype)
        return {k: v.to(device) for k, v in batch.items()}


def next_token_targets(tokens: np.ndarray, modality: np.ndarray, predictable: np.ndarray, prefix: np.ndarray,
                       pad: int, mask_prompt: bool) -> tuple[np.ndarray, np.ndarray]:
    """Targets and target modality of one sequence (see SyntheticData.targets); packed rows of
    several documents too, since a document's <eos> never predicts the next one's <bos>."""
    nxt = np.append(tokens[1:], pad)
    valid = np.append(predictable[1:], False)
    if mask_prompt:
        valid &= np.append(prefix[1:], 0) == 0
    owner = np.maximum.accumulate(np.where(modality >= 0, np.arange(len(modality)), 0))
    current = np.where(owner > 0, modality[owner], -1)
    nxt_mod = np.append(modality[1:], -1)
    mod = np.where(nxt_mod >= 0, nxt_mod, current)
    valid &= mod >= 0
    return np.where(valid, nxt, IGNORE), np.where(valid, mod, -1)


def make_data(exp: Experiment, split: str = "train"):
    """The trainer's data: packed token shards (vlac.data) when the mixture has sources, else the
    generators' samples."""
    if any(c.source is not None for c in exp.data.mixture):
        from vlac.data.loader import PackedData
        return PackedData(exp, split)  # split: vlac/data/split.py
    return SyntheticData(exp, split)


def loss_tokens(batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Target tokens (positions with a loss) in `batches`: an int64 scalar on their device, so
    the count can be summed over ranks without a trip to the host."""
    return torch.stack([(b["targets"] != IGNORE).sum() for b in batches]).sum()


def _stack(arrays) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays))


def extra_shapes(exp: Experiment) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per-sample shape and kind of every per-modality batch entry."""
    out = {}
    for k, v in example_batch(exp, 1, device="meta").items():
        if "." in k:
            out[k] = (tuple(v.shape[1:]), "long" if v.dtype == torch.long else "float")
    return out


def _label_codes(label: int, n: int, size: int, rng) -> list[int]:
    codes = (label * 7 + np.arange(n) * 3) % size
    noisy = rng.random(n) < NOISE
    return [int(c) for c in np.where(noisy, rng.integers(size, size=n), codes)]
