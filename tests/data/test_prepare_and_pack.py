"""vlac prepare on real small datasets, the packing plan, and the document mask."""

from __future__ import annotations

import numpy as np
import torch

import vlac
from vlac.data.loader import PackedData
from vlac.data.packing import ComponentPlan
from vlac.data.prepare import prepare
from vlac.runtime.masks import attention_mask


def test_prepare_reports_tokens_per_source_and_a_rerun_writes_nothing(prepared):
    exp, report = prepared
    assert set(report.components) == {"digits", "robot", "corpus"}
    assert report.components["digits"]["documents"] == 128  # 2 shards x 64 samples
    assert report.components["robot"]["tokens_per_modality"]["action"] > 0
    again = prepare(exp, workers=1)
    assert again.written == 0 and again.skipped_shards == report.written + report.skipped_shards
    assert again.components == report.components


def test_every_document_is_packed_once_per_epoch_within_seq_len():
    lengths = np.random.default_rng(0).integers(5, 60, size=700)
    extras = np.arange(700) % 7 == 0
    plan = ComponentPlan(lengths, extras, 96, seed=1, component=0)
    seen, k = [], 0
    while True:
        epoch, docs = plan.row(k)
        if epoch:
            break
        assert lengths[docs].sum() <= 96 and extras[docs].sum() <= 1
        seen += docs.tolist()
        k += 1
    assert sorted(seen) == list(range(700))
    assert lengths.sum() / (k * 96) > 0.9  # first-fit-decreasing leaves little padding


def test_packed_rows_do_not_depend_on_how_a_batch_is_split(prepared):
    exp, _ = prepared
    a, b = PackedData(exp), PackedData(exp)
    whole = a.micro_batch(1, 0, 8, 1.0, torch.device("cpu"))
    halves = [b.micro_batch(1, first, 4, 1.0, torch.device("cpu")) for first in (0, 4)]
    for key in ("tokens", "targets", "document"):
        assert torch.equal(whole[key], torch.cat([h[key] for h in halves]))
    assert int(whole["document"].max()) >= 2  # rows hold several documents
    a.close(), b.close()


def test_no_attention_crosses_documents():
    document = torch.tensor([[1, 1, 2, 2, 2, 0]])
    mask = attention_mask("causal", None, None, document=document)[0, 0]
    assert mask[3, 2] and not mask[3, 1] and not mask[2, 0] and mask[1, 0]
