"""Frozen parameters in the plan: no gradient or optimizer memory, no weight-gradient FLOPs.

LLaVA's first stage: the language model frozen (`backbone.freeze`), the vision projector trained,
so gradients flow back through the frozen decoder for its inputs only: every decoder GEMM keeps
its input-gradient GEMM and loses its weight-gradient GEMM."""

from pathlib import Path

import pytest

import vlac

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llava.yaml"


def _exp(freeze: bool):
    return vlac.load(EXAMPLE, [f"backbone.freeze={str(freeze).lower()}"], profile="tiny")


@pytest.fixture(scope="module")
def graphs():
    return {freeze: vlac.lower(_exp(freeze)) for freeze in (False, True)}


def test_frozen_parameters_are_counted(graphs):
    trained, frozen = graphs[False], graphs[True]
    assert sum(n.params_frozen for n in trained.nodes) == 0
    frozen_params = sum(n.params_frozen for n in frozen.nodes)
    projector = sum(n.params for n in frozen.nodes if ".projectors." in n.module)
    assert projector > 0 and frozen_params == frozen.params_total - projector


def test_frozen_gemms_lose_their_weight_gradient(graphs):
    trained = {n.name: n for n in graphs[False].nodes if n.kind == "gemm" and n.in_block}
    frozen = {n.name: n for n in graphs[True].nodes if n.kind == "gemm" and n.in_block}
    assert trained and trained.keys() == frozen.keys()
    for name, n in trained.items():
        assert n.flops_bwd == pytest.approx(2 * n.flops_fwd), name  # input and weight gradients
        assert frozen[name].flops_bwd == pytest.approx(n.flops_fwd), name  # the input gradient only


def test_plan_has_no_gradient_or_optimizer_memory_for_frozen_weights(graphs):
    pins = {"dp": 1, "tp": 1, "pp": 1, "ep": 1, "cp": 1, "zero": 0, "microbatch_size": 1}
    trained, frozen = (vlac.plan(_exp(f), pin=pins).to_json()["predicted"]["memory_gb"] for f in (False, True))
    g = graphs[True]
    trainable = 1 - sum(n.params_frozen for n in g.nodes) / g.params_total  # the projector's share
    assert 0 < trainable < 0.1
    assert frozen["weights"] == pytest.approx(trained["weights"])
    for part in ("gradients", "optimizer"):
        assert frozen[part] == pytest.approx(trainable * trained[part], rel=1e-9), part
