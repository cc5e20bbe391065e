"""The activation bytes a pipeline rank keeps with full recompute of k of its blocks (f<k>) as
vlac's runtime runs it, against the cost model's figure for that rank.

The method is tests/compiler/test_analysis.py's (vlac.compiler.measure): one CPU forward in fp32
and training mode, every op output's storage recorded, and counted when the autograd graph (or a
checkpoint's saved input) still holds it after the forward. Here each storage is also charged to
the layer whose forward made it, as the lowered graph charges it: a block's input to that block
(it keeps it, under any policy), what runs before the first block to the inputs (-1), after the
last to the head (L). A rank keeps the layers of its stages; the runtime checkpoints the rank's
layers as parallelize does for it (activation_checkpoint.apply_stage_recompute, the plan's
layers). The stack is vlac's with nothing fused and activations kept in fp32, so the cost
model's per-layer bytes are the CPU lowering's, and one micro-batch in flight on every rank; the
tiny VLA's decoder layers are alike (a MoE in each), where the cost model's per-rank mean is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._pytree import tree_flatten

import vlac
from test_cost_model import one_row
from vlac.compiler.measure import _OutputStorages, cpu_batch, cpu_objective
from vlac.compiler.node_costs import storage_key
from vlac.compiler.planner import Search
from vlac.compiler.search_space import SCHEDULE_CODES
from vlac.runtime.parallel.activation_checkpoint import apply_stage_recompute, rank_full_layers

ROOT = Path(__file__).resolve().parents[2]
LAYERS = 8
MICRO_BATCH = 2
SETS = [f"backbone.layers={LAYERS}", "stack.fused=[]", "stack.activation_dtype=fp32"]


class _ByLayer(_OutputStorages):
    """The recorder of vlac.compiler.measure, also noting the layer each storage was made in."""

    def __init__(self, blocks):
        super().__init__()
        self.layer: dict[int, int] = {}
        self.current = -1
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(self._enter(i))
            block.register_forward_hook(self._leave(i, len(blocks)))

    def _enter(self, i):
        def hook(module, args):
            self.current = i
            self.layer[storage_key(args[0])] = i  # the block keeps its input (graph: its input node)
        return hook

    def _leave(self, i, n):
        def hook(module, args, out):
            self.current = n if i == n - 1 else i
        return hook

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.layer.setdefault(storage_key(t), self.current)
        return out


def kept_by_layer(exp, policy_layers: tuple[str, tuple[int, ...] | None]) -> dict[int, float]:
    """Bytes still held after one forward, per layer that made them (module docstring)."""
    objective = cpu_objective(exp)
    model = objective.model
    apply_stage_recompute(model, model, *policy_layers)
    batch = cpu_batch(exp, MICRO_BATCH)
    exclude = {storage_key(t) for t in list(objective.parameters()) + list(objective.buffers()) + list(batch.values())}
    recorder = _ByLayer(list(model.layers))
    with recorder:
        out = objective(batch)
    loss = out["loss"]
    del out
    exclude.add(storage_key(loss))
    kept: dict[int, float] = {}
    for key, storage in recorder.storages.items():
        if key not in exclude and torch._C._storage_Use_Count(storage._cdata) > 1:
            layer = recorder.layer[key]
            kept[layer] = kept.get(layer, 0.0) + storage.nbytes()
    recorder.storages.clear()
    return kept


@pytest.fixture(scope="module")
def search() -> Search:
    exp = vlac.load(ROOT / "examples" / "tiny_vla.yaml", SETS)
    return Search(exp, exp.cluster, vlac.lower(exp, micro_batch=MICRO_BATCH, dtype="fp32"))


@pytest.mark.parametrize("schedule, v, ks", [
    ("1f1b", 1, (3, 1)),  # each rank its first k of four contiguous layers
    ("interleaved_1f1b", 2, (3, 1)),  # rank 0: layers 0, 1 and 4 of chunks [0, 1] and [4, 5]
])
def test_a_ranks_kept_bytes_under_partial_recompute_are_the_cost_models(search, schedule, v, ks):
    exp, pp, model = search.exp, 2, search.model
    row = one_row(pp=pp, v=v, mb=MICRO_BATCH, m=1, sched=SCHEDULE_CODES.index(schedule))
    ev = model.evaluate(row, forced=np.full((1, pp), 2), forced_layers=np.array([ks], float), time_all=True,
                        detail=True)
    predicted = ev.rank_memory[0, :pp, 4]  # the activations of each rank (one micro-batch in flight)
    chunks, _ = model.composition(pp, v)
    split = [[model.p.layers[i] for i in chunk] for chunk in chunks]  # layer ids, as plan.stage_split
    plan = {"pp": pp, "recompute": "full", "recompute_per_stage": ["full"] * pp,
            "recompute_layers_per_stage": list(ks), "stage_split": split}
    for rank, layers in enumerate(rank_full_layers(plan)):
        assert layers is not None and len(layers) == ks[rank]
        kept = kept_by_layer(exp, ("full", layers))
        mine = [i for chunk in split[rank::pp] for i in chunk]
        measured = sum(kept.get(i, 0.0) for i in mine)
        # measured 0.0004 % apart (the loss's scalars); with every block of the rank checkpointed,
        # as the runtime did before it read the plan's layers, rank 0 keeps 10x less
        assert measured == pytest.approx(predicted[rank], rel=1e-4), (rank, mine, layers)
