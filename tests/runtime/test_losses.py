import math

import pytest
import torch

import vlac
from vlac.runtime.batch import example_batch
from vlac.runtime.data import SyntheticData
from vlac.runtime.diagnostics import loss_terms, per_term_clipped_backward, per_term_grad_norms
from vlac.runtime.heads import MAX_LOGIT_SCALE, ContrastiveHead
from vlac.runtime.losses import Objective
from vlac.runtime.model import build_model
from vlac.spec.training import ContrastiveLoss

from runtime_helpers import ROOT, TINY, tiny_profile


def _batch(exp, n=4, step=0):
    data = SyntheticData(exp)
    return data.micro_batch(step, 0, n, data.global_loss_tokens(step), torch.device("cpu"))


def test_per_modality_ar_losses_sum_to_the_ar_loss_and_respect_weights():
    exp = vlac.load(TINY)
    obj = Objective(build_model(exp), exp)
    batch = _batch(exp)
    out = obj(batch)
    torch.testing.assert_close(out["modality_ar_loss"].sum(), out["ar_loss"])
    mean = out["modality_loss_sum"] / out["modality_count"]
    weights = torch.tensor([1.0, 1.0, 2.0])  # tiny_vla: text, image, action
    expected = (weights * out["modality_loss_sum"]).sum() / batch["loss_norm"]
    torch.testing.assert_close(out["ar_loss"], expected)
    assert (mean > 0).all() and out["loss"] == out["ar_loss"] + out["aux_loss"]


def test_prompt_masking_removes_prompt_targets():
    exp = vlac.load(TINY)
    masked = vlac.load(TINY, ["losses.ar.mask_prompt=true"])
    a, b = _batch(exp), _batch(masked)
    assert (b["targets"] >= 0).sum() < (a["targets"] >= 0).sum()
    assert ((b["targets"] >= 0) & (b["prefix"].roll(-1, 1) == 1)).sum() == 0  # no prompt token is a target


def test_masked_generation_scores_only_masked_positions():
    exp = tiny_profile(ROOT / "examples" / "beit.yaml")
    model = build_model(exp)
    obj = Objective(model, exp)
    batch = _batch(exp)
    torch.manual_seed(0)
    out = obj(batch)
    assert out["ar_loss"] == 0 and out["masked_loss"] > 0 and 0 <= out["masked_accuracy"] <= 1
    # what the model saw: image tokens replaced by <mask> at about mask_ratio of them
    torch.manual_seed(0)
    inputs, chosen = obj._mask_tokens(dict(batch))
    is_image = batch["modality"] == 0
    assert chosen[~is_image].sum() == 0 and chosen.any()
    assert (inputs["tokens"][chosen] == exp.vocab_layout().special("<mask>")).all()


def test_flow_matching_noises_toward_the_data_and_targets_the_velocity():
    exp = tiny_profile(ROOT / "examples" / "transfusion.yaml")
    torch.manual_seed(0)
    obj = Objective(build_model(exp), exp)
    batch = _batch(exp)
    noisy, v = obj._noise_patches(dict(batch))
    t = noisy["image.flow_time"].view(-1, 1, 1)
    x1 = batch["image.features"]
    x0 = x1 - v
    torch.testing.assert_close(noisy["image.features"], t * x1 + (1 - t) * x0)
    out = obj(batch)
    assert out["flow_loss"] > 0 and out["aux_loss"].item() == pytest.approx(5.0 * out["flow_loss"].item(), rel=1e-5)


def test_contrastive_loss_is_low_for_aligned_pairs_and_temperature_is_learnable():
    cfg = ContrastiveLoss(embed_dim=8, temperature_init=0.07)
    head = ContrastiveHead(8, cfg)
    with torch.no_grad():
        head.proj_a.weight.copy_(torch.eye(8))
        head.proj_b.weight.copy_(torch.eye(8))
    x = torch.eye(8)[:4] * 3
    present = torch.ones(4)
    aligned, acc, scale = head(x, x, present)
    shuffled, acc_s, _ = head(x, x.roll(1, 0), present)
    assert aligned < shuffled and acc == 1.0 and acc_s == 0.0
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    aligned.backward()
    assert head.logit_scale.grad is not None
    with torch.no_grad():
        head.logit_scale.fill_(10.0)
    assert head(x, x, present)[2].item() == pytest.approx(MAX_LOGIT_SCALE)  # clamped at 100
    # a sample without both modalities is neither a positive nor a negative
    part, _, _ = head(x, x.roll(1, 0), torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert torch.isfinite(part)
    fixed = ContrastiveHead(8, ContrastiveLoss(embed_dim=8, learnable_temperature=False))
    assert not fixed.logit_scale.requires_grad


def test_contrastive_objective_on_late_fusion_media():
    exp = tiny_profile(ROOT / "examples" / "coca.yaml")
    out = Objective(build_model(exp), exp)(_batch(exp, 8))
    assert out["contrastive_loss"] > 0 and math.isfinite(out["contrastive_loss"].item())
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-4)


def test_moe_losses_reach_the_total():
    exp = vlac.load(TINY)
    out = Objective(build_model(exp), exp)(_batch(exp))
    assert out["moe_aux_loss"] > 0 and out["expert_load"].shape == (2, 4)
    assert out["router_entropy"].shape == (2,) and (out["dropped_fraction"] >= 0).all()
    torch.testing.assert_close(out["loss"], out["ar_loss"] + out["moe_aux_loss"])


def test_per_term_gradient_norms_and_clipping():
    exp = vlac.load(TINY)
    model = build_model(exp)
    obj = Objective(model, exp)
    batch = _batch(exp)
    out = obj(batch)
    terms = loss_terms(out, exp)
    assert set(terms) == {"ar.text", "ar.image", "ar.action", "moe"}
    params = list(model.parameters())
    norms = per_term_grad_norms(out, exp, params)
    assert all(v > 0 for v in norms.values())
    clipped = per_term_clipped_backward(out, exp, params, max_norm=1e-3)
    assert clipped == pytest.approx(norms)
    total = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None))
    assert total <= 1e-3 * len(terms) + 1e-6  # each term contributes at most max_norm


def test_example_batch_drives_the_objective_on_meta():
    exp = vlac.load(ROOT / "examples" / "vla_10b_moe_h100.yaml", profile="tiny")
    model = build_model(exp, "meta")
    out = Objective(model, exp).to("meta")(example_batch(exp, 2, device="meta"))
    assert out["loss"].device.type == "meta" and out["modality_ar_loss"].shape == (len(exp.modalities),)
