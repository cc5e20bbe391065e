"""Deferred construction on one process: any piece of a weight is drawn alone with the values of
the whole, a deferred model holds only shapes for its weight matrices, and materialising it gives
the model `build_model` returns (the multi-rank layouts: tests/runtime/parallel/
test_materialize_layouts.py)."""

import pytest
import torch

import vlac
from vlac.runtime import materialize as mz
from vlac.runtime.model import build_model

from runtime_helpers import ROOT, TINY


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(mz, "BLOCK_ELEMENTS", 24)  # several generator streams even for tiny shapes


@pytest.mark.parametrize("shape, index", [
    ((10, 6), [range(3, 8), range(6)]),  # a row shard (FSDP, column-wise TP) across block edges
    ((10, 6), [range(10), range(2, 4)]),  # a column shard (row-wise TP)
    ((5, 4, 6), [range(2, 4), range(4), range(6)]),  # experts sharded by expert (EP)
    ((5, 4, 6), [range(5), [0, 1], [1, 2, 4, 5]]),  # inner width, and a strided piece (FSDP over TP)
])
def test_any_piece_is_drawn_alone_with_the_values_of_the_whole(small_blocks, shape, index):
    shape = torch.Size(shape)
    whole = mz.normal_piece(7, "layers.0.w", shape, [torch.arange(n) for n in shape], 0.02)
    index = [torch.tensor(list(i)) for i in index]
    piece = mz.normal_piece(7, "layers.0.w", shape, index, 0.02)
    assert mz.block_rows(shape) < shape[0]  # the piece really spans several streams
    assert torch.equal(piece, whole[torch.meshgrid(*index, indexing="ij")])
    assert not torch.equal(whole, mz.normal_piece(8, "layers.0.w", shape, [torch.arange(n) for n in shape], 0.02))


def test_a_deferred_model_holds_shapes_and_materialises_to_the_built_one():
    exp = vlac.load(ROOT / "examples" / "dense_text_1b.yaml", profile="tiny")
    deferred = build_model(exp, deferred=True)
    assert deferred.head.weight is deferred.embed.weight
    assert all(p.is_meta == (p.dim() >= 2) for p in deferred.parameters())
    allocated = mz.materialize([deferred], deferred, deferred.deferred_init, torch.device("cpu"))
    built = build_model(exp)
    assert deferred.head.weight is deferred.embed.weight  # the tie survives materialisation
    assert allocated == sum(p.numel() * 4 for p in built.parameters() if p.dim() >= 2)
    for (name, p), q in zip(deferred.named_parameters(), built.parameters()):
        assert torch.equal(p, q), name


def test_initial_scales_follow_the_gpt2_rule_and_the_constructors():
    exp = vlac.load(TINY)
    model = build_model(exp)
    layers, hidden = exp.backbone.layers, exp.backbone.hidden
    block = model.layers[0]
    assert block.attn.wq.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert block.attn.wo.weight.std().item() == pytest.approx(0.02 / (2 * layers) ** 0.5, rel=0.1)
    assert block.mlp.experts.w2.std().item() == pytest.approx(0.02 / (2 * layers) ** 0.5, rel=0.1)
    assert block.mlp.router.weight.std().item() == pytest.approx(hidden ** -0.5, rel=0.2)
    assert torch.equal(block.attn_norm.weight, torch.ones(hidden))  # vectors keep their constructors' values
    assert not any(m.bias.any() for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None)
    other = build_model(exp, seed=exp.train.seed + 1)
    assert not torch.equal(other.layers[0].attn.wq.weight, block.attn.wq.weight)
