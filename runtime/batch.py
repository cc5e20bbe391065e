"""The batch contract between data, model and compiler: which keys, which shapes.

Always: tokens, targets, target_modality, span, prefix, modality [B, S] (int64), sample [B]
(int64) and loss_norm (scalar). `modality` is the modality index of each position (continuous
placeholders included; -1 on specials and padding); `target_modality` is that of the next token,
-1 where no loss; `sample` the global index of each sample in the run's data order, from which
training-time corruption (masking, flow noise) is derived (vlac.runtime.noise).

Per modality m (n = its tokens, P = positions it occupies in the sequence):
- continuous in the sequence: `m.features` [B, n, input_dim], `m.index` [B, P] sequence
  positions, `m.present` [B, P] (1 where the sample has the signal). P = resampler queries
  when the projector is a resampler, else n. With a vision tower (`encoder`), `m.pixels`
  [B, channels, size, size] (normalised as the tower's image processor does) replaces
  `m.features`;
- video in the sequence with pose/time embeddings or an encoder: `m.index`, `m.present` [B, n],
  `m.pose` [B, cameras, 12];
- context modalities of late fusion (`Experiment.context_modalities()`): discrete ones as `m.tokens`
  [B, n] unified-vocabulary ids, continuous ones as `m.features` [B, n, input_dim]; both with
  `m.present` [B, n] (and `m.pose` for video); they take no sequence positions;
- the flow-matching modality: `m.flow_time` [B], the noise level of `m.features` (1 = clean; the
  Objective draws it and noises the features).

With data sources (packed real data, vlac.data): `document` [B, S], the id (1, 2, ...) of the
document each position belongs to (0 on padding); attention stays inside a document.
"""

from __future__ import annotations

import torch

from vlac.spec import Experiment

BASE_KEYS = ("tokens", "targets", "target_modality", "span", "prefix", "modality", "sample", "loss_norm")
PER_SAMPLE_KEYS = ("sample", "loss_norm")  # not [B, S]: sample is [B], loss_norm a scalar
POSE_DIM = 12


def is_media(exp: Experiment, name: str) -> bool:
    """A late-fusion context modality: read through cross-attention, not in the token sequence
    (`fusion.context_modalities`, by default every image, video and continuous modality)."""
    return exp.fusion.mode == "late" and name in exp.context_modalities()


def resampler_queries(exp: Experiment, name: str) -> int | None:
    """Latents of the resampler of continuous modality `name`, None without one."""
    m = exp.modalities[name]
    return m.resampler_queries if m.kind == "continuous" and m.projector == "resampler" else None


def sequence_positions(exp: Experiment, name: str) -> int:
    """Sequence positions the content of modality `name` takes (span markers excluded)."""
    if is_media(exp, name):
        return 0
    m = exp.modalities[name]
    return m.positions if m.kind == "continuous" else m.tokens


def needs_video_inputs(exp: Experiment, name: str) -> bool:
    m = exp.modalities[name]
    if m.kind != "video":
        return False
    return m.encoder is not None or m.pose_embedding.kind != "none" or m.time_embedding.kind != "none"


def continuous_input(exp: Experiment, name: str) -> str:
    """The batch key continuous modality `name` arrives under: `m.pixels` when a vision tower
    computes its features in the run (`encoder`), else `m.features`."""
    return f"{name}.pixels" if exp.modalities[name].encoder is not None else f"{name}.features"


def tower_modalities(exp: Experiment) -> list[str]:
    """The continuous modalities whose features a pretrained vision tower computes, in spec order."""
    return [n for n, m in exp.modalities.items() if m.kind == "continuous" and m.encoder is not None]


def pixel_shape(exp: Experiment, name: str) -> tuple[int, int, int]:
    """[channels, size, size] of the images the vision tower of modality `name` reads."""
    cfg, _ = exp.modalities[name].encoder.tower(f"modalities.{name}.encoder.hf")
    return cfg.get("num_channels", 3), cfg["image_size"], cfg["image_size"]


def batch_keys(exp: Experiment) -> list[str]:
    keys = list(BASE_KEYS)
    flow = exp.losses.flow_matching.modality if exp.losses.flow_matching else None
    for name, m in exp.modalities.items():
        media = is_media(exp, name)
        if m.kind == "continuous":
            keys += [continuous_input(exp, name), f"{name}.present"] + ([] if media else [f"{name}.index"])
        elif media:
            keys += [f"{name}.tokens", f"{name}.present"]
        elif needs_video_inputs(exp, name):
            keys += [f"{name}.index", f"{name}.present"]
        if m.kind == "video" and (media or needs_video_inputs(exp, name)):
            keys.append(f"{name}.pose")
        if name == flow:
            keys.append(f"{name}.flow_time")
    if any(c.source is not None for c in exp.data.mixture):
        keys.append("document")  # packed real data: document ids of each row's positions
    return keys


def example_batch(exp: Experiment, micro_batch: int, seq_len: int | None = None,
                  device: str | torch.device = "meta", dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A batch of the right shapes and dtypes (zeros; presence and flow time 1), for tracing and
    shape propagation."""
    s = seq_len or exp.train.seq_len
    b = micro_batch
    long = dict(dtype=torch.long, device=device)
    flt = dict(dtype=dtype, device=device)
    batch: dict[str, torch.Tensor] = {k: torch.zeros(b, s, **long) for k in BASE_KEYS if k not in PER_SAMPLE_KEYS}
    batch["sample"] = torch.arange(b, **long)
    batch["loss_norm"] = torch.ones((), dtype=torch.float32, device=device)
    for key in batch_keys(exp)[len(BASE_KEYS):]:
        if key == "document":
            batch[key] = torch.ones(b, s, **long)
            continue
        name, field = key.rsplit(".", 1)
        m = exp.modalities[name]
        n = m.tokens
        if field == "features":
            batch[key] = torch.zeros(b, n, m.input_dim, **flt)
        elif field == "pixels":
            batch[key] = torch.zeros(b, *pixel_shape(exp, name), **flt)
        elif field in ("index", "present"):
            p = n if is_media(exp, name) else sequence_positions(exp, name)
            batch[key] = torch.zeros(b, p, **long) if field == "index" else torch.ones(b, p, **flt)
        elif field == "tokens":
            batch[key] = torch.zeros(b, n, **long)
        elif field == "pose":
            batch[key] = torch.zeros(b, m.cameras, POSE_DIM, **flt)
        elif field == "flow_time":
            batch[key] = torch.ones(b, **flt)
    return batch
