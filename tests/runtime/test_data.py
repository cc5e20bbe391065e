import numpy as np
import pytest
import torch

import vlac
from vlac.runtime.data import IGNORE, SyntheticData
from vlac.runtime.datasets.cartpole import TARGETS, CartPoleGenerator, controller
from vlac.runtime.datasets.digits import DigitsGenerator, answer, split_indices
from vlac.runtime.features import fitted_vq, patch_features

from runtime_helpers import ROOT, TINY

REAL = ("data.mixture=[{name: captions, weight: 1, modalities: [image, text], generator: digits},"
        "{name: control, weight: 1, modalities: [text, image, action], generator: cartpole}]")


def test_samples_are_a_pure_function_of_seed_split_and_index():
    exp = vlac.load(TINY, [REAL])
    a, b = SyntheticData(exp), SyntheticData(exp)
    for i in (0, 5, 17):
        assert np.array_equal(a.sample(i).tokens, b.sample(i).tokens)
    held_out = SyntheticData(exp, "eval")
    assert not all(np.array_equal(a.sample(i).tokens, held_out.sample(i).tokens) for i in range(8))


def test_micro_batches_tile_the_global_batch():
    exp = vlac.load(TINY)
    data = SyntheticData(exp)
    whole = data.micro_batch(3, 0, 8, 1.0, torch.device("cpu"))
    halves = [data.micro_batch(3, first, 4, 1.0, torch.device("cpu")) for first in (0, 4)]
    for key in whole:
        if key != "loss_norm":
            assert torch.equal(whole[key], torch.cat([h[key] for h in halves]))


def test_targets_are_the_next_predictable_token():
    exp = vlac.load(TINY, [REAL])
    data = SyntheticData(exp)
    s = data.sample(1)
    targets, modality = data.targets(s)
    valid = targets != IGNORE
    assert np.array_equal(targets[valid], s.tokens[1:][valid[:-1]])
    assert (modality[valid] >= 0).all() and (modality[~valid] == -1).all()
    pad = exp.vocab_layout().special("<pad>")
    assert not (targets == pad).any()  # padding and continuous placeholders are never targets
    assert (targets == exp.vocab_layout().special("<eos>")).sum() == 1


def test_digits_generator_uses_held_out_images_and_correct_answers():
    gen = DigitsGenerator(0)
    train, held = set(split_indices("train")), set(split_indices("eval"))
    assert not train & held and len(held) == 360
    rng = np.random.default_rng(0)
    for _ in range(20):
        ep = gen.episode(rng, "eval")
        assert ep.image.shape == (8, 8) and 0 <= ep.image.min() and ep.image.max() <= 1
        if ep.prompt:
            assert ep.answer == answer(ep.prompt, ep.label)
    assert answer("odd?", 7) == "yes" and answer("big?", 3) == "no" and answer("digit?", 2) == "two"


def test_cartpole_controller_balances_and_reaches_the_commanded_position():
    gen = CartPoleGenerator(0)
    state, _ = gen.env.reset(seed=3)
    for _ in range(400):
        state = gen._step(controller(state, TARGETS[2][1]))
    assert abs(state[2]) < 0.05 and abs(state[0] - TARGETS[2][1]) < 0.1
    ep = gen.episode(np.random.default_rng(0), "train", chunk=4)
    assert ep.actions.shape == (4,) and np.abs(ep.actions).max() <= 1 and ep.image.shape == (16, 16)
    assert ep.prompt in {f"keep {n}" for n, _ in TARGETS}


def test_vq_codes_of_real_images_and_patch_features():
    exp = vlac.load(TINY, [REAL])
    data = SyntheticData(exp)
    tok, report = fitted_vq(exp, "image", data.generators)
    assert report.usage > 0.5 and report.reconstruction_mse < 0.05
    s = data.sample(0)
    r = exp.vocab_layout().range_of("image")
    codes = s.tokens[s.modality == list(exp.modalities).index("image")][1:-1]  # between the markers
    assert len(codes) == 16 and ((codes >= r.offset) & (codes < r.offset + r.size)).all()
    img = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    f = patch_features(img, 16, 32)
    assert f.shape == (16, 32) and not np.allclose(f, patch_features(img[::-1].copy(), 16, 32))


@pytest.mark.parametrize("example", ["llava", "flamingo", "transfusion", "vla_10b_moe_h100"])
def test_layout_positions_match_the_spec(example):
    exp = vlac.load(ROOT / "examples" / f"{example}.yaml", profile="tiny")
    data = SyntheticData(exp)
    for i in range(6):
        s = data.sample(i)
        used = int((s.tokens != exp.vocab_layout().special("<pad>")).sum()
                   + sum(int((s.modality == j).sum()) for j, (n, m) in enumerate(exp.modalities.items())
                         if m.kind == "continuous"))
        assert used <= exp.tokens_per_sample() <= exp.train.seq_len
