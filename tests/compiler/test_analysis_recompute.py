"""vlac.runtime.recompute: the policies the compiler costs, applied to the real model."""

from pathlib import Path

import pytest
import torch

import vlac
from vlac.compiler.measure import cpu_batch, cpu_objective
from vlac.runtime.recompute import RECOMPUTE_POLICIES, apply_recompute, iter_blocks

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _loss_and_grads(exp, policy):
    objective = cpu_objective(exp, policy)
    loss = objective(cpu_batch(exp, 2))["loss"]
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in objective.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("policy", ["selective", "full"])
def test_recompute_changes_memory_not_results(policy):
    exp = vlac.load(EXAMPLES / "tiny_vla.yaml")
    loss, grads = _loss_and_grads(exp, "none")
    loss2, grads2 = _loss_and_grads(exp, policy)
    torch.testing.assert_close(loss2, loss)
    assert grads2.keys() == grads.keys()
    for k in grads:
        torch.testing.assert_close(grads2[k], grads[k], msg=k)


def test_blocks_are_the_outermost_modules_of_module_lists():
    exp = vlac.load(EXAMPLES / "flamingo.yaml", profile="tiny")
    objective = cpu_objective(exp)
    names = [name for name, _ in iter_blocks(objective)]
    layers = [n for n in names if n.startswith("model.layers.")]
    assert layers == [f"model.layers.{i}" for i in range(exp.backbone.layers)]
    assert all(n.count("layers.") == 1 for n in names)  # nothing inside a block is a block


def test_policies_wrap_in_place_and_none_restores():
    exp = vlac.load(EXAMPLES / "tiny_vla.yaml")
    objective = cpu_objective(exp)
    keys = list(objective.state_dict())
    assert apply_recompute(objective, "full") == exp.backbone.layers
    assert all("forward" in block.__dict__ for _, block in iter_blocks(objective))
    assert list(objective.state_dict()) == keys
    apply_recompute(objective, "none")
    assert not any("forward" in block.__dict__ for _, block in iter_blocks(objective))


def test_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match="choose one of " + ", ".join(RECOMPUTE_POLICIES)):
        apply_recompute(torch.nn.Module(), "sometimes")
