"""Counter-based noise: SplitMix64 exactly, uniform/normal statistics, and independence from the
batch split, the generator state and tracing, which is what makes corrupted-input losses equal
across parallel layouts."""

from pathlib import Path

import pytest
import torch
import torch.fx

import vlac
from vlac.runtime import noise
from vlac.runtime.data import SyntheticData
from vlac.runtime.losses import Objective
from vlac.runtime.model import build_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_splitmix64_matches_the_reference_sequence():
    """The first outputs of SplitMix64 seeded with 0 (the published test vector)."""
    z = torch.tensor([0, 0x9E3779B97F4A7C15 - (1 << 64)], dtype=torch.long)
    got = [int(v) & ((1 << 64) - 1) for v in noise._splitmix64(z)]
    assert got == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_uniform_and_normal_have_the_right_moments():
    sample = torch.arange(64)
    like = torch.empty(64, 4096)
    u = noise.uniform(7, "mask_choice", sample, like)
    assert u.dtype == torch.float32 and u.shape == like.shape
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert float(u.mean()) == pytest.approx(0.5, abs=3e-3)
    assert float(u.var()) == pytest.approx(1 / 12, abs=2e-3)
    z = noise.normal(7, "flow_noise_u", "flow_noise_v", sample, like)
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-2) and float(z.std()) == pytest.approx(1.0, abs=1e-2)
    other = noise.uniform(7, "mask_ratio", sample, like)  # another stream: uncorrelated
    assert abs(float(torch.corrcoef(torch.stack([u.flatten(), other.flatten()]))[0, 1])) < 1e-2
    assert not torch.equal(u, noise.uniform(8, "mask_choice", sample, like))  # another seed


def test_a_sample_gets_the_same_numbers_in_any_batch_and_generator_state():
    like = torch.empty(4, 3, 5)
    whole = noise.normal(3, "flow_noise_u", "flow_noise_v", torch.tensor([10, 11, 12, 13]), like)
    torch.manual_seed(123)
    split = torch.cat([noise.normal(3, "flow_noise_u", "flow_noise_v", torch.tensor(ids), like[:2])
                       for ids in ([10, 11], [12, 13])])
    assert torch.equal(whole, split)
    flipped = noise.normal(3, "flow_noise_u", "flow_noise_v", torch.tensor([13, 12, 11, 10]), like)
    assert torch.equal(flipped, whole.flip(0))
    with pytest.raises(ValueError, match="mask_ratio"):
        noise.uniform(0, "nope", torch.tensor([0]), like[:1])


def test_it_traces_with_symbolic_sizes():
    class Draw(torch.nn.Module):
        def forward(self, x, sample):
            return noise.uniform(1, "flow_time", sample, x)

    gm = torch.fx.symbolic_trace(Draw())
    x, sample = torch.empty(3, 7), torch.tensor([4, 5, 6])
    assert torch.equal(gm(x, sample), Draw()(x, sample))
    assert torch.equal(gm(torch.empty(2, 9), sample[:2]), Draw()(torch.empty(2, 9), sample[:2]))


@pytest.mark.parametrize("spec", ["show_o.yaml", "transfusion.yaml"])
def test_the_objectives_corruption_does_not_depend_on_the_micro_batch_split(spec):
    exp = vlac.load(EXAMPLES / spec, profile="tiny")
    data = SyntheticData(exp)
    objective = Objective(build_model(exp), exp)
    whole = data.micro_batch(0, 0, 4, 100.0, torch.device("cpu"))
    halves = [data.micro_batch(0, i, 2, 100.0, torch.device("cpu")) for i in (0, 2)]
    assert whole["sample"].tolist() == [0, 1, 2, 3]
    torch.manual_seed(0)
    if exp.losses.masked:
        _, chosen = objective._mask_tokens(whole)
        torch.manual_seed(1)
        parts = [objective._mask_tokens(h)[1] for h in halves]
        assert chosen.any() and torch.equal(chosen, torch.cat(parts))
    else:
        noisy, target = objective._noise_patches(whole)
        torch.manual_seed(1)
        parts = [objective._noise_patches(h)[1] for h in halves]
        assert torch.equal(target, torch.cat(parts))
    with pytest.raises(KeyError, match="batch\\['sample'\\]"):
        objective({k: v for k, v in whole.items() if k != "sample"})
