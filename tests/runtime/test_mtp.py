"""Multi-token prediction (runtime/mtp.py, DeepSeek-V3 Sec. 2.2): the loss against a reference
built here from the modules' pieces, the shifted targets' masking, the spec's errors, and the
modules in the runtime's logs."""

import pytest
import torch
import torch.nn.functional as F

import vlac
from vlac.runtime.data import SyntheticData
from vlac.runtime.losses import Objective, modality_loss_weights
from vlac.runtime.model import build_model
from vlac.runtime.mtp import IGNORE, mtp_targets
from vlac.spec import SpecError

from runtime_helpers import TINY, train_steps

MTP = ["losses.mtp.depth=2", "losses.mtp.weight=0.3"]


@pytest.fixture(scope="module")
def tiny():
    exp = vlac.load(TINY, MTP)
    model = build_model(exp)
    data = SyntheticData(exp)
    batch = data.micro_batch(0, 0, 4, data.global_loss_tokens(0), torch.device("cpu"))
    return exp, model, batch


def _reference_mtp_loss(exp, model, batch) -> torch.Tensor:
    """(lambda / D) sum_k CE_k written out: the decoder's output before its final norm, module k on
    [norm(emb(t_{i+k})); norm(h^{k-1}_i)], the shared head, the token k+1 ahead as target."""
    x0 = model.embed_inputs(batch)
    mask = model.attention_mask(batch)
    h = x0
    for block in model.layers:
        h = block(h, mask)[0]
    weights = modality_loss_weights(exp)
    B, S = batch["tokens"].shape
    total = torch.zeros(())
    for k, module in enumerate(model.mtp, start=1):
        emb = torch.zeros_like(x0)
        emb[:, : S - k] = x0[:, k:]
        h = module.block(module.proj(torch.cat([module.embed_norm(emb), module.hidden_norm(h)], -1)), mask)[0]
        logits = model.head(module.norm(h)).float()
        for b in range(B):
            for i in range(S - k):
                t = int(batch["targets"][b, i + k])
                if t < 0:
                    continue
                w = weights[int(batch["target_modality"][b, i + k])]
                total = total + w * F.cross_entropy(logits[b, i], torch.tensor(t))
    return exp.losses.mtp.weight / exp.losses.mtp.depth * total / batch["loss_norm"]


def test_mtp_loss_equals_the_reference_from_the_modules_pieces(tiny):
    exp, model, batch = tiny
    out = Objective(model, exp)(batch)
    with torch.no_grad():
        ref = _reference_mtp_loss(exp, model, batch)
    assert out["mtp_loss"].item() > 0
    assert out["mtp_loss"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((out["ar_loss"] + out["mtp_loss"] + out["aux_loss"]).item(), rel=1e-6)
    # depth k has the AR targets that lie k positions further on
    valid = batch["targets"] >= 0
    assert out["mtp_count"].tolist() == [float(valid[:, k:].sum()) for k in (1, 2)]


def test_mtp_targets_shift_by_k_and_stay_inside_a_document():
    targets = torch.tensor([[10, 11, 12, IGNORE, 14, 15]])
    batch = {"targets": targets, "target_modality": (targets >= 0).long() - 1 + (targets >= 0).long(),
             "document": torch.tensor([[1, 1, 1, 2, 2, 2]])}
    t1, _ = mtp_targets(batch, 1, packed=False)
    assert t1.tolist() == [[11, 12, IGNORE, 14, 15, IGNORE]]
    t2, m2 = mtp_targets(batch, 2, packed=True)
    # positions 1 and 2 would read document 2's targets: no loss there
    assert t2.tolist() == [[12, IGNORE, IGNORE, 15, IGNORE, IGNORE]]
    assert m2.tolist() == [[1, -1, -1, 1, -1, -1]]


def test_mtp_modules_train_and_generation_ignores_them(tiny):
    exp, model, batch = tiny
    losses = train_steps(exp, 3)
    assert losses[-1] < losses[0]
    from vlac.runtime.generate import decoding, make_cache  # decoding with a cache: the modules never run
    prompt = {k: v[:1] for k, v in batch.items() if v.dim() > 0}
    with torch.no_grad(), decoding(model, make_cache(model, 1)):
        out = model(prompt)
    assert "mtp_logits" not in out and "mtp_logits" in model(prompt)


def test_mtp_moe_blocks_follow_the_decoders_rows(tiny):
    exp, model, batch = tiny
    out = model(batch)
    # tiny_vla's last layer is MoE, so is each MTP block: its rows follow the 2 decoder layers'
    assert [m.block.is_moe for m in model.mtp] == [True, True]
    assert out["expert_load"].shape[0] == exp.backbone.layers + exp.losses.mtp.depth
    from vlac.runtime.parallel.parallelize import moe_rows
    rows, _ = moe_rows(model)
    assert rows == {0: 0, 1: 1, 2: 2, 3: 3}


@pytest.mark.parametrize("overrides,message", [
    (["losses.ar=null", "losses.masked.modality=image"], r"\(losses\.mtp\): multi-token prediction trains on the AR loss.*enable losses\.ar"),
    (["losses.mtp.depth=16", "train.seq_len=16", "train.global_batch_tokens=256"], r"\(losses\.mtp\.depth\): 16 leaves no target.*use depth <= 14"),
    (["losses.mtp.depth=0"], r"losses\.mtp\.depth"),
    (["losses.mtp.weight=-1"], r"losses\.mtp\.weight"),
])
def test_spec_errors_name_the_field_and_the_fix(overrides, message):
    with pytest.raises(SpecError, match=message):
        vlac.load(TINY, MTP + overrides)
