"""Images as a pretrained vision tower reads them: resized to its image size and normalised per
channel as its image processor does ((x - mean) / std, x in [0, 1]).

The mean and std come from the checkpoint's preprocessor_config.json when the folder has one,
else from the family's processor defaults: CLIP's are the statistics of OpenAI's training images,
SigLIP maps [0, 1] to [-1, 1]. The tower of `modalities.<m>.encoder` then sees the pixel
distribution it was trained on.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from vlac.spec.modalities import tower_config

PROCESSOR_FILE = "preprocessor_config.json"
# transformers' CLIPImageProcessor / SiglipImageProcessor defaults (OPENAI_CLIP_MEAN/STD, IMAGENET_STANDARD)
FAMILY_STATS = {"clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


@functools.lru_cache(maxsize=16)
def pixel_stats(folder: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel that the tower in `folder` expects."""
    cfg, family = tower_config(folder, folder)
    mean, std = FAMILY_STATS[family]
    processor = Path(folder) / PROCESSOR_FILE
    if processor.is_file():
        found = json.loads(processor.read_text())
        mean, std = found.get("image_mean", mean), found.get("image_std", std)
    channels = cfg.get("num_channels", 3)
    as_list = lambda v: tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v]))  # noqa: E731
    mean, std = as_list(mean), as_list(std)
    if len(mean) != channels:  # a grey processor for a colour tower, say: one value for every channel
        mean, std = mean[:1] * channels, std[:1] * channels
    return mean, std


def tower_pixels(image: np.ndarray, folder: str) -> np.ndarray:
    """[H, W] image in [0, 1] -> [channels, size, size] normalised pixels for the tower in `folder`."""
    from ..features import resize

    cfg, _ = tower_config(folder, folder)
    mean, std = pixel_stats(folder)
    x = resize(image, cfg["image_size"], cfg.get("num_channels", 3))
    return ((x - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]).astype(np.float32)
