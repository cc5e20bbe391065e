"""Turning raw images into model inputs: VQ codes for `image` modalities (a tokenizer fitted once
per process per set of training images, keyed by their content), and patch features for
`vit_features` modalities.

No pretrained vision encoder can be downloaded here, so `vit_features` come from a frozen random
patch encoder: the image is average-pooled to a grid of patches (one per token), and each
patch's 4x4 pixels go through a fixed random linear map (seeded by its dimensions) to input_dim.
It keeps the image's information (the map is injective for input_dim >= 16), which is what a
projector experiment needs.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import OrderedDict
from pathlib import Path

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


_fitted: dict[tuple, tuple[VQTokenizer, VQReport]] = {}  # tokenizer key (_tokenizer_key) -> tokenizer
# (config, identities of a generators dict) -> (those generators, digest of their fitting images):
# image_codes asks per image, and gathering the fitting set to digest it again would cost a refit's
# worth of data. The generators are kept alive so their ids cannot name other objects meanwhile.
_fit_sets: OrderedDict[tuple, tuple[tuple, str]] = OrderedDict()
_FIT_SETS = 16


def fitted_vq(exp: Experiment, name: str, generators: dict) -> tuple[VQTokenizer, VQReport]:
    """The VQ tokenizer of image modality `name`: loaded from `modalities.<name>.path` (trained by
    `vlac tokenizer train`), else fitted on training images of the mixture's real-data generators
    (deterministic: same codes in every process). Cached per process under its config and the
    content digest of the images it was fitted on (or the saved files' stamp), so another image set
    under the same generator names gets its own tokenizer and the same images reuse theirs."""
    return _fitted[_fit(exp, name, generators)]


def _fit(exp: Experiment, name: str, generators: dict) -> tuple:
    """The key of `name`'s tokenizer in _fitted, after loading or fitting it there if needed."""
    key, images = _tokenizer_key(exp, name, generators)
    if key in _fitted:
        return key
    spec: ImageVQ = exp.modalities[name]
    if spec.path is not None:  # trained by `vlac tokenizer train`
        from vlac.data.tokenizers.saved import load_vq

        tok, manifest = load_vq(spec, name)
        r = manifest.get("report", {})
        _fitted[key] = tok, VQReport(r.get("steps", 0), r.get("reconstruction_mse", float("nan")), r.get("usage", 0.0),
                                     r.get("entropy", 0.0), r.get("perplexity", 0.0), [])
        return key
    if images is None:  # the digest was memoised but this set's fit never finished (it raised)
        images = _fitting_images(exp, name, generators)
    _fitted[key] = train_vq(spec, images, steps=VQ_FIT_STEPS, seed=exp.data.seed)
    return key


def _tokenizer_key(exp: Experiment, name: str, generators: dict) -> tuple[tuple, np.ndarray | None]:
    """(what the tokenizer of `name` is a function of, the fitting images when they had to be
    gathered for it, else None): the modality's config and the data seed, with the content digest
    of the fitting images, or the size and modification time of a saved tokenizer's files."""
    spec: ImageVQ = exp.modalities[name]
    config = (spec.model_dump_json(), exp.data.seed)
    if spec.path is not None:
        return (*config, "saved", _saved_stamp(spec.path)), None
    ident = (config, tuple((g, id(v)) for g, v in generators.items()))  # in order: the fit draws in it
    if ident in _fit_sets:
        _fit_sets.move_to_end(ident)
        return (*config, "fitted", _fit_sets[ident][1]), None
    images = _fitting_images(exp, name, generators)
    digest = hashlib.sha256(repr((images.shape, images.dtype.str)).encode() + images.tobytes()).hexdigest()
    _fit_sets[ident] = tuple(generators.values()), digest
    if len(_fit_sets) > _FIT_SETS:
        _fit_sets.popitem(last=False)
    return (*config, "fitted", digest), images


def _fitting_images(exp: Experiment, name: str, generators: dict) -> np.ndarray:
    """[N, C, H, W] training images of the generators (up to VQ_FIT_IMAGES from each image set,
    VQ_FIT_IMAGES // 2 episodes of each simulator), resized to the modality's input."""
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
    if not raw:
        raise ValueError(f"modalities.{name}: no training images to fit its VQ tokenizer on (data generators: "
                         f"{sorted(generators) or 'none'}); add a mixture component with images, or set "
                         f"modalities.{name}.path to a tokenizer trained by `vlac tokenizer train`")
    return np.stack([resize(r, spec.image_size, spec.channels) for r in raw])


def _saved_stamp(path) -> tuple:
    """(file name, size, modification time) of each file of a saved tokenizer folder: a tokenizer
    trained again into the same folder is loaded again. Missing files stamp as absent (load_vq
    then names what is missing)."""
    folder = Path(path)
    stamps = []
    for f in sorted(folder.iterdir()) if folder.is_dir() else ():
        st = f.stat()
        stamps.append((f.name, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


_codes: dict[tuple, np.ndarray] = {}
_CODE_CACHE = 8192  # images whose codes are kept (the digits are seen again and again)


def image_codes(exp: Experiment, name: str, generators: dict, image: np.ndarray) -> np.ndarray:
    """VQ codes of one image. Single-threaded: for a tiny convolution the thread pool costs far
    more than the work (and a fixed reduction order keeps every process's codes identical)."""
    tokenizer = _fit(exp, name, generators)
    key = (tokenizer, image.tobytes())
    if key not in _codes:
        spec: ImageVQ = exp.modalities[name]
        tok, _ = _fitted[tokenizer]
        with single_thread():
            x = torch.as_tensor(resize(image, spec.image_size, spec.channels))[None]
            codes = tok.encode(x)[0].numpy()
        if len(_codes) >= _CODE_CACHE:
            _codes.pop(next(iter(_codes)))
        _codes[key] = codes
    return _codes[key]
