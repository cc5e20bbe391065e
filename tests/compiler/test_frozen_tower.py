"""A pretrained vision tower in the plan (modalities.<m>.encoder): its forward is costed, and frozen
(LLaVA's default) it has no backward at all, since nothing before it needs a gradient, and
neither gradient nor optimizer memory; trained, its GEMMs carry their weight gradients."""

import sys
from pathlib import Path

import pytest

import vlac

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime" / "hf"))
from hf_models import TOWER, llava_experiment, save_tower  # noqa: E402

PINS = {"dp": 1, "tp": 1, "pp": 1, "ep": 1, "cp": 1, "zero": 0, "microbatch_size": 1}


@pytest.fixture(scope="module")
def exps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tower") / "clip"
    save_tower("clip", folder)
    return {freeze: llava_experiment(folder, freeze=freeze) for freeze in (True, False)}


def test_a_frozen_tower_costs_its_forward_only(exps):
    frozen, trained = vlac.lower(exps[True]), vlac.lower(exps[False])
    # the tower's nodes: the image modality's, but the projector's (the traced patch embedding sits
    # at the modality's module, the tower's method being called from TowerProjector.forward)
    tower = {f: [n for n in g.nodes if n.module.startswith("model.projectors.image") and ".projector." not in n.module]
             for f, g in ((True, frozen), (False, trained))}
    gemms = [n for n in tower[False] if n.kind == "gemm"]
    # the patch embedding (pixels are data: its weight gradient only), q, k, v, out, fc1, fc2 of layers 0 and 1
    assert len(gemms) == 1 + 6 * (TOWER["num_hidden_layers"] - 1)
    assert gemms[0].flops_bwd == gemms[0].flops_fwd > 0
    assert all(n.flops_bwd == 2 * n.flops_fwd > 0 for n in gemms[1:])
    assert all(n.flops_bwd == 0 for n in tower[True])
    assert frozen.flops_fwd == trained.flops_fwd
    # and the projector's first GEMM loses its input gradient: nothing before it trains any more
    first = {f: next(n for n in g.nodes if ".projector." in n.module and n.kind == "gemm")
             for f, g in ((True, frozen), (False, trained))}
    assert first[False].flops_bwd == 2 * first[False].flops_fwd and first[True].flops_bwd == first[True].flops_fwd
    assert trained.flops_bwd - frozen.flops_bwd == pytest.approx(sum(n.flops_bwd for n in tower[False])
                                                                 + first[False].flops_fwd, rel=1e-12)
    reached = sum(n.params for n in tower[True])
    assert reached > 0 and sum(n.params_frozen for n in tower[True]) == reached
    assert sum(n.params_frozen for n in trained.nodes) == 0

    memory = {f: vlac.plan(exps[f], pin=PINS).to_json()["predicted"]["memory_gb"] for f in (True, False)}
    share = 1 - reached / trained.params_total  # what still trains: projector and decoder
    assert memory[True]["weights"] == pytest.approx(memory[False]["weights"])
    for part in ("gradients", "optimizer"):
        assert memory[True][part] == pytest.approx(share * memory[False][part], rel=1e-9), part
