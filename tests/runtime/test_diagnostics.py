import torch

import vlac
from vlac.runtime.data import SyntheticData
from vlac.runtime.diagnostics import codebook_metrics, modality_reliance, moe_metrics, swap_modality
from vlac.runtime.losses import Objective
from vlac.runtime.model import build_model

from runtime_helpers import TINY


def test_moe_metrics_from_the_objective():
    exp = vlac.load(TINY)
    data = SyntheticData(exp)
    out = Objective(build_model(exp), exp)(data.micro_batch(0, 0, 4, 100.0, torch.device("cpu")))
    m = moe_metrics(out)
    assert len(m["expert_load_fraction"]) == 2 and abs(sum(m["expert_load_fraction"][0]) - 1) < 1e-6
    assert all(v >= 1.0 for v in m["load_imbalance"]) and len(m["router_entropy"]) == 2


def test_codebook_metrics():
    uniform = codebook_metrics(torch.arange(8).repeat(4), 8)
    assert uniform["usage"] == 1.0 and abs(uniform["entropy_fraction"] - 1) < 1e-6
    collapsed = codebook_metrics(torch.zeros(32, dtype=torch.long), 8)
    assert collapsed["usage"] == 1 / 8 and collapsed["entropy"] == 0


def test_swap_moves_only_the_named_modality():
    exp = vlac.load(TINY)
    batch = SyntheticData(exp).micro_batch(0, 0, 4, 1.0, torch.device("cpu"))
    swapped = swap_modality(batch, exp, "image")
    image = batch["modality"] == 1
    assert torch.equal(swapped["tokens"][~image], batch["tokens"][~image])
    assert torch.equal(swapped["tokens"][image].view(4, -1), batch["tokens"][image].view(4, -1).roll(1, 0))


def test_reliance_probe_sees_a_model_that_reads_the_image():
    """A rigged model that answers correctly only while it sees the sample's own image: swapping
    the image must cost it accuracy, while a model reading only the text is unaffected."""
    exp = vlac.load(TINY)
    batch = SyntheticData(exp).micro_batch(0, 0, 6, 1.0, torch.device("cpu"))
    answer = batch["target_modality"] == 0
    image = batch["modality"] == 1
    v = exp.vocab_layout().padded
    truth = batch["targets"].clamp_min(0)

    class ImageReader(torch.nn.Module):
        def forward(self, b):
            own = ((b["tokens"] * image).sum(1, keepdim=True) == (batch["tokens"] * image).sum(1, keepdim=True))
            return {"logits": torch.nn.functional.one_hot(torch.where(own, truth, torch.zeros_like(truth)), v).float()}

    class TextReader(torch.nn.Module):
        def forward(self, b):
            return {"logits": torch.nn.functional.one_hot(truth, v).float()}

    r = modality_reliance(ImageReader(), batch, exp, "image", answer)
    assert r["accuracy"] == 1.0 and r["accuracy_swapped"] < 0.5 and r["reliance"] > 0.5
    assert modality_reliance(TextReader(), batch, exp, "image", answer)["reliance"] == 0.0
