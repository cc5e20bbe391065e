"""Turning raw images into model inputs: VQ codes for `image` modalities (a tokenizer fitted once
per process on the mixture's own images), and patch features for `vit_features` modalities.

No pretrained vision encoder can be downloaded here, so `vit_features` come from a frozen random
patch encoder: the image is average-pooled to a grid of patches (one per token), and each
patch's 4x4 pixels go through a fixed random linear map (seeded by its dimensions) to input_dim.
It keeps the image's information (the map is injective for input_dim >= 16), which is what a
projector experiment needs.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from vlac.spec import Experiment
from vlac.spec.modalities import ImageVQ

from .tokenizers.vq import VQTokenizer, VQReport, single_thread, train_vq

SUB = 4  # pixels per patch side fed to the random patch encoder
VQ_FIT_IMAGES = 1024
VQ_FIT_STEPS = 200


def resize(image: np.ndarray, size: int, channels: int = 1) -> np.ndarray:
    """[H, W] in [0, 1] -> [channels, size, size] (bilinear; grayscale repeated over channels)."""
    x = torch.as_tensor(image, dtype=torch.float32)[None, None]
    with single_thread():
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0]
    return x.expand(channels, -1, -1).numpy()


def _grid(n: int) -> tuple[int, int]:
    rows = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
    return rows, n // rows


@functools.lru_cache(maxsize=16)
def _projection(pixels: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng([pixels, dim])
    return (rng.normal(size=(pixels, dim)) / math.sqrt(pixels)).astype(np.float32)


def patch_features(image: np.ndarray, tokens: int, input_dim: int) -> np.ndarray:
    """[H, W] image -> [tokens, input_dim] features of a frozen random patch encoder."""
    rows, cols = _grid(tokens)
    x = torch.as_tensor(image, dtype=torch.float32)[None, None]
    with single_thread():
        x = F.adaptive_avg_pool2d(x, (rows * SUB, cols * SUB))[0, 0].numpy()
    patches = x.reshape(rows, SUB, cols, SUB).transpose(0, 2, 1, 3).reshape(tokens, SUB * SUB)
    return (patches - 0.25) @ _projection(SUB * SUB, input_dim) * 4.0


def _vq_key(exp: Experiment, name: str, generators: dict) -> tuple:
    return (exp.modalities[name].model_dump_json(), tuple(sorted(generators)), exp.data.seed)


_fitted: dict[tuple, tuple[VQTokenizer, VQReport]] = {}


def fitted_vq(exp: Experiment, name: str, generators: dict) -> tuple[VQTokenizer, VQReport]:
    """The VQ tokenizer of image modality `name`, fitted on training images of the mixture's
    real-data generators (deterministic: same codes in every process)."""
    key = _vq_key(exp, name, generators)
    if key not in _fitted and exp.modalities[name].path is not None:  # trained by `vlac tokenizer train`
        from vlac.data.tokenizers.saved import load_vq

        tok, manifest = load_vq(exp.modalities[name], name)
        r = manifest.get("report", {})
        _fitted[key] = tok, VQReport(r.get("steps", 0), r.get("reconstruction_mse", float("nan")), r.get("usage", 0.0),
                                     r.get("entropy", 0.0), r.get("perplexity", 0.0), [])
    if key not in _fitted:
        spec: ImageVQ = exp.modalities[name]
        rng = np.random.default_rng([exp.data.seed, 7])
        raw = []
        for g in generators.values():
            if hasattr(g, "images"):
                imgs = g.images("train")
                raw += list(imgs[rng.permutation(len(imgs))[:VQ_FIT_IMAGES]])
            elif type(g).__name__ != "SyntheticGenerator":
                raw += [ep.image for ep in (g.episode(rng, "train") for _ in range(VQ_FIT_IMAGES // 2))
                        if ep.image is not None]
        images = np.stack([resize(r, spec.image_size, spec.channels) for r in raw])
        _fitted[key] = train_vq(spec, images, steps=VQ_FIT_STEPS, seed=exp.data.seed)
    return _fitted[key]


_codes: dict[tuple, np.ndarray] = {}
_CODE_CACHE = 8192  # images whose codes are kept (the digits are seen again and again)


def image_codes(exp: Experiment, name: str, generators: dict, image: np.ndarray) -> np.ndarray:
    """VQ codes of one image. Single-threaded: for a tiny convolution the thread pool costs far
    more than the work (and a fixed reduction order keeps every process's codes identical)."""
    key = (_vq_key(exp, name, generators), image.tobytes())
    if key not in _codes:
        spec: ImageVQ = exp.modalities[name]
        tok, _ = fitted_vq(exp, name, generators)
        with single_thread():
            x = torch.as_tensor(resize(image, spec.image_size, spec.channels))[None]
            codes = tok.encode(x)[0].numpy()
        if len(_codes) >= _CODE_CACHE:
            _codes.pop(next(iter(_codes)))
        _codes[key] = codes
    return _codes[key]
