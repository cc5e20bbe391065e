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


# ---- data-parallel traffic and optimiser state (issue 14, item 2) ------------------------------------
# Overlaps off, so the data-parallel figure is the collectives' whole time, which the test computes.
EIGHT = {"preset": "h100-sxm", "nodes": 1, "gpus_per_node": 8}
NO_OVERLAP = ["stack.grad_reduce_overlap=false", "stack.param_gather_overlap=false"]


def _predicted(sets: list[str], zero: int) -> dict:
    from vlac.spec.system import Cluster

    exp = vlac.load(EXAMPLE, NO_OVERLAP + sets, profile="tiny")
    pins = {"dp": 8, "tp": 1, "pp": 1, "ep": 1, "cp": 1, "zero": zero, "microbatch_size": 1}
    return vlac.plan(exp, cluster=Cluster.model_validate(EIGHT), pin=pins).to_json()["predicted"]


@pytest.mark.parametrize("zero", [0, 1])
def test_frozen_lm_is_neither_reduced_nor_gathered_nor_stepped(graphs, zero):
    """ZeRO-0: one all-reduce of the BF16 gradients; ZeRO-1: their reduce-scatter plus the
    all-gather of the updated weights. Frozen, only the projector's gradients and weights move."""
    from vlac.compiler.hardware import Hardware
    from vlac.spec.system import Cluster

    hw = Hardware(Cluster.model_validate(EIGHT))
    g = graphs[True]
    trainable = g.params_total - sum(n.params_frozen for n in g.nodes)
    trained, frozen = _predicted([], zero), _predicted(["backbone.freeze=true"], zero)

    def traffic(params: int) -> float:
        grads = 2.0 * params  # BF16
        return float(hw.all_reduce(grads, 8) if zero == 0 else 2 * hw.reduce_scatter(grads, 8))

    assert trained["time_s"]["dp_comm"] == pytest.approx(traffic(g.params_total), rel=1e-9)
    assert frozen["time_s"]["dp_comm"] == pytest.approx(traffic(trainable), rel=1e-9)
    assert frozen["time_s"]["optimizer"] == pytest.approx(trained["time_s"]["optimizer"] * trainable / g.params_total,
                                                          rel=1e-9)
    shard = 8 if zero >= 1 else 1  # ZeRO-1 shards the optimiser state over dp
    for part, per_param in (("gradients", 2), ("optimizer", 12)):  # BF16 gradients; FP32 master + Adam moments
        drop = trained["memory_gb"][part] - frozen["memory_gb"][part]
        assert drop * 1e9 == pytest.approx(per_param * (g.params_total - trainable) / (shard if part == "optimizer" else 1),
                                           rel=1e-9), part


# ---- backward FLOPs, exactly (issue 14, item 5) ------------------------------------------------------
def _linear_weights(exp, under: tuple[str, ...]) -> int:
    """Weights of the nn.Linear layers under the given module paths (the model built on meta)."""
    import torch.nn as nn

    from vlac.runtime.model import build_model

    model = build_model(exp, device="meta")
    return sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.split(".")[0] in under)


def test_frozen_lm_drops_exactly_its_weight_gradient_flops(graphs):
    """Freezing the language model removes 2 * tokens * weights of each of its matmuls (blocks and
    head) from the backward pass and nothing else: the input gradients that carry the loss back to
    the projector, and attention's backward, stay."""
    trained, frozen = graphs[False], graphs[True]
    lm_matmul_weights = _linear_weights(_exp(True), ("layers", "head"))
    assert lm_matmul_weights > 0
    assert trained.flops_bwd - frozen.flops_bwd == pytest.approx(2 * trained.tokens * lm_matmul_weights, rel=1e-12)
    assert frozen.flops_fwd == trained.flops_fwd
    attention = [sum(n.flops_bwd for n in g.nodes if n.kind == "attention") for g in (trained, frozen)]
    assert attention[0] > 0 and attention[1] == attention[0]
    head = [next(n for n in g.nodes if n.kind == "gemm" and n.module.endswith("head")) for g in (trained, frozen)]
    assert head[1].flops_bwd == head[1].flops_fwd > 0  # its input gradient, on the way back to the projector


def test_frozen_projector_with_nothing_trainable_upstream_has_no_backward():
    """The projector is the first thing the features meet. Trained, its first matmul computes the
    weight gradient only (the input is data) and its second both; frozen, nothing before it needs a
    gradient, so its matmuls have no backward FLOPs at all, and everything else is unchanged."""
    trained = vlac.lower(_exp(False))
    frozen = vlac.lower(vlac.load(EXAMPLE, ["modalities.image.freeze=true"], profile="tiny"))
    first, second = [n for n in trained.nodes if ".projectors." in n.module and n.kind == "gemm"]
    assert first.flops_bwd == first.flops_fwd > 0 and second.flops_bwd == 2 * second.flops_fwd > 0
    assert all(n.flops_bwd == 0 for n in frozen.nodes if ".projectors." in n.module)
    assert trained.flops_bwd - frozen.flops_bwd == pytest.approx(first.flops_bwd + second.flops_bwd, rel=1e-12)
