"""The per-process VQ tokenizer cache is keyed by what the tokenizer is fitted on: a second image
set under the same generator name gets its own tokenizer (and codes), the same images reuse theirs,
and a tokenizer saved again into its folder is loaded again."""

import numpy as np
import pytest
import torch

import vlac
from vlac.runtime import features
from vlac.runtime.features import fitted_vq, image_codes

from runtime_helpers import TINY


class Images:
    """The `images(split)` face of a generator (what vlac.data's SourceImages shows the runtime)."""

    def __init__(self, seed: int, n: int = 24):
        rng = np.random.default_rng(seed)
        self._images = rng.random((n, 16, 16)).astype(np.float32) * (np.arange(16) < 4 + seed)

    def images(self, split: str) -> np.ndarray:
        return self._images


@pytest.fixture
def fresh_cache(monkeypatch):
    """Empty caches (other tests fill the process's) and a short fit."""
    monkeypatch.setattr(features, "_fitted", {})
    monkeypatch.setattr(features, "_codes", {})
    monkeypatch.setattr(features, "_fit_sets", type(features._fit_sets)())
    monkeypatch.setattr(features, "VQ_FIT_STEPS", 3)


def test_two_image_sets_under_one_name_get_their_own_tokenizers(fresh_cache):
    exp = vlac.load(TINY)
    first, second = {"source:digits": Images(0)}, {"source:digits": Images(1)}
    tok_a, _ = fitted_vq(exp, "image", first)
    tok_b, _ = fitted_vq(exp, "image", second)
    assert tok_a is not tok_b
    weights = zip(tok_a.state_dict().values(), tok_b.state_dict().values())
    assert any(not torch.equal(a, b) for a, b in weights)  # fitted on other images, not merely another object
    image = Images(2)._images[0]
    m = exp.modalities["image"]
    for tok, gens in ((tok_a, first), (tok_b, second)):  # each set's codes come from its own tokenizer
        with torch.no_grad():
            own = tok.encode(torch.as_tensor(features.resize(image, m.image_size, m.channels))[None])[0].numpy()
        assert np.array_equal(image_codes(exp, "image", gens, image), own)


def test_the_same_images_reuse_their_tokenizer(fresh_cache):
    exp = vlac.load(TINY)
    tok, _ = fitted_vq(exp, "image", {"source:digits": Images(0)})
    assert fitted_vq(exp, "image", {"source:digits": Images(0)})[0] is tok  # other objects, same content
    assert len(features._fitted) == 1
    other_seed = vlac.load(TINY, ["data.seed=5"])  # the config is part of the key
    assert fitted_vq(other_seed, "image", {"source:digits": Images(0)})[0] is not tok


def test_a_set_without_images_names_the_modality_and_the_fix(fresh_cache):
    exp = vlac.load(TINY)
    with pytest.raises(ValueError, match=r"modalities.image: no training images .* modalities.image.path"):
        fitted_vq(exp, "image", {})


def test_a_tokenizer_saved_again_into_its_folder_is_loaded_again(fresh_cache, monkeypatch, tmp_path):
    from vlac.data.tokenizers import saved

    (tmp_path / "weights").write_bytes(b"one")
    loads = []
    monkeypatch.setattr(saved, "load_vq", lambda spec, name: (loads.append(1) or object(), {}))
    exp = vlac.load(TINY, [f"modalities.image.path={tmp_path}"])
    first = fitted_vq(exp, "image", {})[0]
    assert fitted_vq(exp, "image", {})[0] is first and len(loads) == 1
    (tmp_path / "weights").write_bytes(b"three")  # another size: another stamp
    assert fitted_vq(exp, "image", {})[0] is not first and len(loads) == 2
