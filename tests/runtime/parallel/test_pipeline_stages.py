"""Pipeline stages as views of the model: names kept, and the chain of stages is the model."""

import contextlib

import pytest
import torch

import vlac
from vlac.runtime.data import SyntheticData
from vlac.runtime.model import build_model
from vlac.runtime.parallel.pipeline import StageModule, check_pipelinable, model_view, split_layers, stage_ids
from vlac.runtime.parallel.parallelize import moe_rows

from pathlib import Path

TINY = Path(__file__).resolve().parents[3] / "examples" / "tiny_vla.yaml"


@pytest.fixture(scope="module")
def setup():
    exp = vlac.load(TINY, ["backbone.layers=3"])
    model = build_model(exp).eval()
    batch = SyntheticData(exp).micro_batch(0, 0, 2, 100.0, torch.device("cpu"))
    return exp, model, batch


def test_stage_split_maps_to_block_ids_and_is_checked():
    assert split_layers([[-1, 0], [1, 2, 3]], 3, 2) == [[0], [1, 2]]
    with pytest.raises(ValueError, match="has 2 chunks but pp x virtual_stages = 4"):
        split_layers([[-1, 0], [1, 2, 3]], 3, 4)
    with pytest.raises(ValueError, match="does not list -1..3"):
        split_layers([[-1, 0], [2, 3]], 3, 2)
    assert stage_ids(1, pp=2, virtual=3) == [1, 3, 5]  # the looped placement of interleaved 1F1B


def test_views_keep_the_whole_models_parameter_names(setup):
    exp, model, _ = setup
    full = dict(model.named_parameters())
    first = dict(model_view(model, [0], first=True, last=False).named_parameters())
    last = dict(model_view(model, [1, 2], first=False, last=True).named_parameters())
    assert set(first) | set(last) == set(full)
    assert not set(first) & set(last)
    assert all(first[n] is full[n] for n in first)  # shared, not copied
    assert any(n.startswith("layers.2.") for n in last) and "head.weight" in last and "embed.weight" in first


def test_running_the_stages_in_turn_gives_the_models_outputs(setup):
    exp, model, batch = setup
    rows, _ = moe_rows(model)
    ref = model(batch)
    stages = [StageModule(model_view(model, ids, first=i == 0, last=i == 2), i == 0, i == 2,
                          [rows[j] for j in ids if j in rows], contextlib.nullcontext)
              for i, ids in enumerate([[0], [1], [2]])]
    fields = {k: v for k, v in batch.items() if v.dim() > 0}
    x = stages[0](**fields)
    x = stages[1](x, **fields)
    logits, hidden = stages[2](x, **fields)
    torch.testing.assert_close(logits, ref["logits"])
    torch.testing.assert_close(hidden, ref["hidden"])
    loads = torch.cat([r["expert_load"] for s in stages for r in s.records])
    torch.testing.assert_close(loads, ref["expert_load"])
    aux = sum(r["aux_loss"] for s in stages for r in s.records)
    torch.testing.assert_close(aux, ref["aux_loss"])


def test_unsupported_models_are_refused_with_the_model_part(setup):
    exp, model, _ = setup
    odd = build_model(exp, "meta")
    odd.extra = torch.nn.Linear(2, 2, device="meta")  # a part no stage is known to hold
    with pytest.raises(ValueError, match=r"model parts \['extra'\].*--pin pp=1"):
        check_pipelinable(exp, odd)
    check_pipelinable(exp, model)
    for sets in (["backbone.tied_embeddings=true"], ["losses.masked.modality=image"], ["fusion.mode=late"]):
        ok = vlac.load(TINY, sets)  # pipelined since (test_pipeline_extras.py)
        check_pipelinable(ok, build_model(ok, "meta"))
