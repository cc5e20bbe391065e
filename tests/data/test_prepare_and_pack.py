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


def test_held_out_documents_are_disjoint_from_training_and_every_component_has_some(prepared):
    from vlac.data.loader import Component
    from vlac.data.split import EVAL_FRACTION

    exp, report = prepared
    for i, comp in enumerate(exp.data.mixture):
        train, held = Component(exp, i, "train"), Component(exp, i, "eval")
        ids = lambda c: set(zip(c.shard_of.tolist(), c.local.tolist()))  # noqa: E731
        assert ids(train).isdisjoint(ids(held)) and len(held.lengths) >= 1
        assert len(ids(train) | ids(held)) == report.components[comp.name]["documents"]
        assert len(held.lengths) <= max(1, 4 * EVAL_FRACTION * report.components[comp.name]["documents"])
    eval_data = PackedData(exp, "eval")
    rows = eval_data.micro_batch(0, 0, 4, 1.0, torch.device("cpu"))
    assert int(rows["document"].max()) >= 1
    eval_data.close()


def test_the_split_of_a_document_depends_only_on_its_component_shard_input_and_index(tmp_path):
    from vlac.data.split import document_hashes, held_out

    stem = tmp_path / "00000"
    stem.with_suffix(".json").write_text('{"input": [["/data/a/cc-0007.tar", 10]]}')
    other = tmp_path / "00042"  # the same input file under another shard name (files added before it)
    other.with_suffix(".json").write_text('{"input": [["/elsewhere/cc-0007.tar", 99]]}')
    h = document_hashes("captions", stem, 5000)
    assert np.array_equal(h, document_hashes("captions", other, 5000))
    assert np.array_equal(h[:100], document_hashes("captions", stem, 100))
    assert not np.array_equal(h, document_hashes("robot", stem, 5000))
    assert 0.5 / 64 < held_out(h).mean() < 2 / 64
    above = np.uint64(2**63) + np.array([5, 3, 9], np.uint64)  # none under the threshold: the smallest is held out
    assert held_out(above).tolist() == [False, True, False]
