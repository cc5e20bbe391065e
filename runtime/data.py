"""Samples and batches in the unified token layout.

Every sample is one mixture component's modalities in order, each discrete span wrapped in its
begin/end markers, continuous signals occupying reserved positions. Samples are a pure function
of (seed, sample index), so any split of a global batch over data-parallel ranks and
micro-batches sees exactly the same data: the basis of the single-process equivalence checks.

The `synthetic` generator makes learnable structure without downloads: a latent class per
sample decides the caption, the image/video/audio codes (with noise), the action bins and the
continuous signals, so cross-modal prediction is possible and loss goes down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vlac.spec import Experiment

IGNORE = -100
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VERBS = ("push", "pick", "lift", "turn", "slide", "stack", "pour", "open", "wipe", "drop")
NOISE = 0.1


@dataclass(frozen=True)
class Sample:
    tokens: np.ndarray  # [S] int64
    modality: np.ndarray  # [S] modality index of each position (-1: special or padding)
    span: np.ndarray  # [S] id of the discrete non-text span a position is in (0: none)
    prefix: np.ndarray  # [S] 1 on prompt positions (every modality but the last)
    continuous: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (features [n, d], positions [n])
    present: dict[str, bool]


class SyntheticData:
    def __init__(self, exp: Experiment):
        self.exp = exp
        self.layout = exp.vocab_layout()
        self.names = list(exp.modalities)
        self.seq_len = exp.train.seq_len
        weights = np.array([c.weight for c in exp.data.mixture], dtype=np.float64)
        self.cum = np.cumsum(weights / weights.sum())
        self.mask_prompt = bool(exp.losses.ar and exp.losses.ar.mask_prompt)
        self.continuous = [n for n, m in exp.modalities.items() if m.kind == "continuous"]

    # ---- one sample ----------------------------------------------------------------------
    def sample(self, index: int) -> Sample:
        rng = np.random.default_rng([self.exp.data.seed, index])
        comp = self.exp.data.mixture[int(np.searchsorted(self.cum, rng.random(), side="right").clip(max=len(self.cum) - 1))]
        label = int(rng.integers(10))
        L = self.layout
        toks, mods, spans, prefix = [L.special("<bos>")], [-1], [0], [1]
        cont: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        last = len(comp.modalities) - 1
        span_id = 0
        for pos_in_comp, name in enumerate(comp.modalities):
            m = self.exp.modalities[name]
            mi = self.names.index(name)
            is_prompt = int(pos_in_comp != last)
            if m.kind == "continuous":
                start = len(toks)
                feats = rng.normal(label / 10.0, NOISE, size=(m.tokens, m.input_dim)).astype(np.float32)
                cont[name] = (feats, np.arange(start, start + m.tokens))
                toks += [L.special("<pad>")] * m.tokens
                mods += [-1] * m.tokens
                spans += [0] * m.tokens
                prefix += [is_prompt] * m.tokens
                continue
            body = self._discrete(name, m, label, rng)
            if m.kind == "text":
                toks += body
                mods += [mi] * len(body)
                spans += [0] * len(body)
                prefix += [is_prompt] * len(body)
                continue
            span_id += 1
            open_, close = ("<boa>", "<eoa>") if m.kind == "action" else ("<boi>", "<eoi>")
            toks += [L.special(open_)] + body + [L.special(close)]
            mods += [mi] * (len(body) + 2)
            spans += [0] + [span_id] * len(body) + [0]
            prefix += [is_prompt] * (len(body) + 2)
        toks.append(L.special("<eos>"))
        mods.append(-1)
        spans.append(0)
        prefix.append(0)
        pad = self.seq_len - len(toks)
        if pad < 0:
            raise ValueError(f"a {comp.name} sample needs {len(toks)} positions but train.seq_len is {self.seq_len}")
        toks += [L.special("<pad>")] * pad
        mods += [-1] * pad
        spans += [0] * pad
        prefix += [0] * pad
        present = {n: n in cont for n in self.continuous}
        return Sample(np.array(toks), np.array(mods), np.array(spans), np.array(prefix), cont, present)

    def _discrete(self, name: str, m, label: int, rng: np.random.Generator) -> list[int]:
        r = self.layout.range_of(name)
        if m.kind == "text":
            caption = f"{VERBS[label]} the {CLASS_NAMES[label]} "
            text = (caption * (m.tokens // len(caption) + 1))[: m.tokens]
            if m.tokenizer == "byte":
                return [r.offset + b for b in text.encode()]
            return [r.offset + (hash_word(w) % r.size) for w in (text.split() * m.tokens)[: m.tokens]]
        if m.kind == "action":
            return [r.offset + (label * (d + 2) + h * 3) % m.bins for h in range(m.horizon) for d in range(m.dims)]
        n = m.tokens
        codes = (label * 7 + np.arange(n) * 3) % r.size
        noisy = rng.random(n) < NOISE
        codes = np.where(noisy, rng.integers(r.size, size=n), codes)
        return [r.offset + int(c) for c in codes]

    # ---- batches ---------------------------------------------------------------------------
    def targets(self, s: Sample) -> tuple[np.ndarray, np.ndarray]:
        """Next-token targets and their modality; no loss on padding, continuous placeholders,
        the <bos> prediction, or (with prompt masking) on prompt modalities."""
        nxt = np.append(s.tokens[1:], self.layout.special("<pad>"))
        nxt_mod = np.append(s.modality[1:], -1)
        nxt_prefix = np.append(s.prefix[1:], 0)
        valid = nxt_mod >= 0
        eos = nxt == self.layout.special("<eos>")
        valid |= eos
        if self.mask_prompt:
            valid &= nxt_prefix == 0
        # <eos> is charged to the modality it ends
        mod = np.where(nxt_mod >= 0, nxt_mod, np.maximum(s.modality, 0))
        return np.where(valid, nxt, IGNORE), np.where(valid, mod, -1)

    def global_loss_tokens(self, step: int) -> int:
        g = self.exp.train.global_batch
        return sum(int((self.targets(self.sample(step * g + i))[0] != IGNORE).sum()) for i in range(g))

    def micro_batch(self, step: int, first: int, size: int, loss_norm: float, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Samples step*global_batch + first .. + first+size-1 as one batch."""
        base = step * self.exp.train.global_batch + first
        samples = [self.sample(base + i) for i in range(size)]
        tg = [self.targets(s) for s in samples]
        batch = {
            "tokens": torch.from_numpy(np.stack([s.tokens for s in samples])),
            "targets": torch.from_numpy(np.stack([t[0] for t in tg])),
            "target_modality": torch.from_numpy(np.stack([t[1] for t in tg])),
            "span": torch.from_numpy(np.stack([s.span for s in samples])),
            "prefix": torch.from_numpy(np.stack([s.prefix for s in samples])),
            "loss_norm": torch.tensor(float(loss_norm)),
        }
        for name in self.continuous:
            m = self.exp.modalities[name]
            feats = np.zeros((size, m.tokens, m.input_dim), np.float32)
            index = np.zeros((size, m.tokens), np.int64)
            present = np.zeros((size, m.tokens), np.float32)
            for i, s in enumerate(samples):
                if name in s.continuous:
                    feats[i], index[i] = s.continuous[name]
                    present[i] = 1.0
            batch[f"{name}.features"] = torch.from_numpy(feats).to(dtype)
            batch[f"{name}.index"] = torch.from_numpy(index)
            batch[f"{name}.present"] = torch.from_numpy(present).to(dtype)
        return {k: v.to(device) for k, v in batch.items()}


def hash_word(word: str) -> int:
    """A stable hash (Python's str hash is salted per process)."""
    h = 2166136261
    for b in word.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h
