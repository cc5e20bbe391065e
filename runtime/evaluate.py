"""Held-out evaluation by generation: caption and answer accuracy (exact match of the generated
text), action accuracy (exact bin and within one bin), and generated images, on samples of the
`eval` split of vlac.runtime.data."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from .data import Sample, SyntheticData
from .generate import generate


def prompt_batch(data: SyntheticData, sample: Sample, length: int) -> dict[str, torch.Tensor]:
    """A batch of one sample cut after `length` positions (what a model sees before answering)."""
    batch = data.collate([sample], 1.0, torch.device("cpu"))
    seq = batch["tokens"].size(1)
    return {k: (v[:, :length] if v.dim() == 2 and v.size(1) == seq and "." not in k else v) for k, v in batch.items()}


def first_position(sample: Sample, token: int, modality: int) -> int:
    hits = np.flatnonzero((sample.tokens == token) & (sample.modality == modality))
    return int(hits[0]) if len(hits) else -1


@dataclass
class EvalReport:
    caption: list[bool] = field(default_factory=list)
    answer: list[bool] = field(default_factory=list)
    answer_options: list[int] = field(default_factory=list)  # answers a guess chooses among, per question
    action_exact: list[float] = field(default_factory=list)
    action_within_one: list[float] = field(default_factory=list)
    action_bins: list[int] = field(default_factory=list)
    examples: list[tuple[str, str, str]] = field(default_factory=list)  # (prompt, reference, generated)

    def summary(self, bins: int | None = None, majority: float | None = None) -> dict[str, float]:
        out = {}
        if self.caption:
            out.update(caption_accuracy=float(np.mean(self.caption)), caption_chance=0.1, captions=len(self.caption))
        if self.answer:
            out.update(answer_accuracy=float(np.mean(self.answer)),
                       answer_chance=float(np.mean([1 / k for k in self.answer_options])), answers=len(self.answer))
        if self.action_exact:
            out.update(action_accuracy=float(np.mean(self.action_exact)),
                       action_within_one_bin=float(np.mean(self.action_within_one)), actions=len(self.action_exact))
            if bins:
                out["action_chance"] = 1.0 / bins
            if majority is not None:
                out["action_majority_baseline"] = majority
        return out


@torch.no_grad()
def evaluate(model, data: SyntheticData, samples: int, text: str, action: str | None = None,
             options: dict[str, int] | None = None) -> EvalReport:
    """Generate greedily on `samples` eval samples: the answer (or caption) of text modality
    `text` where a sample has one, and the tokens of action modality `action`."""
    exp = data.exp
    rep = EvalReport()
    names = list(exp.modalities)
    text_range = data.layout.range_of(text)
    tok = data.text[text]
    for i in range(samples):
        s = data.sample(i)
        ep = s.episode
        ti = names.index(text)
        before = s.modality[:max(s.answer_start, 0)]
        conditioned = bool(((before >= 0) & (before != ti)).any())  # an image (or other input) precedes it
        if s.answer_start > 0 and ep.answer and s.modality[s.answer_start] == ti and conditioned:
            ref = tok.encode(ep.answer)
            gen = generate(model, prompt_batch(data, s, s.answer_start), len(ref), modality=text)[0]
            got = tok.decode((gen - text_range.offset).tolist())
            hit = got == ep.answer
            if ep.prompt:
                rep.answer.append(hit)
                rep.answer_options.append((options or {}).get(ep.prompt, 2))
            else:
                rep.caption.append(hit)
            if len(rep.examples) < 12:
                rep.examples.append((ep.prompt, ep.answer, got))
        if action is not None:
            ai = names.index(action)
            at = first_position(s, data.layout.special("<boa>"), ai)
            if at < 0:
                continue
            spec = exp.modalities[action]
            n = spec.dims * spec.horizon
            offset = data.layout.range_of(action).offset
            gen = generate(model, prompt_batch(data, s, at + 1), n, modality=action)[0] - offset
            ref = torch.as_tensor(s.tokens[at + 1: at + 1 + n] - offset)
            rep.action_exact.append(float((gen == ref).float().mean()))
            rep.action_within_one.append(float(((gen - ref).abs() <= 1).float().mean()))
    return rep


def majority_bin_rate(data: SyntheticData, action: str, samples: int) -> tuple[float, int]:
    """Accuracy of always answering the most frequent training bin (per action position), and
    that bin: the baseline an action model must beat besides uniform chance."""
    names = list(data.exp.modalities)
    train = SyntheticData(data.exp, "train")
    counts, total = Counter(), 0
    ai = names.index(action)
    offset = data.layout.range_of(action).offset
    for i in range(samples):
        s = train.sample(i)
        at = first_position(s, data.layout.special("<boa>"), ai)
        if at < 0:
            continue
        spec = data.exp.modalities[action]
        bins = s.tokens[at + 1: at + 1 + spec.dims * spec.horizon] - offset
        counts.update(bins.tolist())
        total += len(bins)
    if not total:
        return 0.0, -1
    top, n = counts.most_common(1)[0]
    return n / total, int(top)
