"""Full recompute of a stage's first k blocks (vlac.runtime.recompute, `layers`): what the
compiler costs for stacks with partial_recompute (Megatron's --recompute-num-layers k)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from vlac.runtime.recompute import apply_recompute, iter_blocks

WIDTH, BLOCKS, TOKENS = 16, 4, 8


class Stage(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))
                                    for _ in range(BLOCKS))

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return x


def saved_bytes_and_grads(stage: Stage) -> tuple[int, list[torch.Tensor]]:
    """Bytes autograd keeps for backward over one forward, and the parameter gradients."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x = torch.randn(TOKENS, WIDTH, generator=torch.Generator().manual_seed(1), requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = stage(x)
    out.square().sum().backward()
    return total, [p.grad.clone() for p in stage.parameters()]


def test_the_first_k_blocks_are_checkpointed_and_keep_less():
    stage = Stage()
    kept, grads = [], []
    for k in range(BLOCKS + 1):
        stage.zero_grad()
        assert apply_recompute(stage, "full", layers=k) == k
        wrapped = ["forward" in block.__dict__ for _, block in iter_blocks(stage)]
        assert wrapped == [i < k for i in range(BLOCKS)]
        b, g = saved_bytes_and_grads(stage)
        kept.append(b)
        grads.append(g)
    # each checkpointed block keeps only its input instead of its three GEMM/GELU inputs
    assert all(a > b for a, b in zip(kept, kept[1:]))
    steps = {a - b for a, b in zip(kept, kept[1:])}
    assert len(steps) == 1  # alike blocks free alike bytes
    for g in grads[1:]:  # recompute changes memory, never the gradients
        for a, b in zip(grads[0], g):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # None: every block, as before
    assert apply_recompute(stage, "full") == BLOCKS


def test_the_stage_applies_the_plans_layer_count():
    stage = Stage()
    apply_recompute(stage, "full", 2)
    assert ["forward" in block.__dict__ for _, block in iter_blocks(stage)] == [True, True, False, False]
    apply_recompute(stage, "none")
    assert not any("forward" in block.__dict__ for _, block in iter_blocks(stage))


@pytest.mark.parametrize("layers", [-1, 1.5, "2"])
def test_a_bad_layer_count_is_named(layers):
    with pytest.raises(ValueError, match="recompute layers .* integer >= 0"):
        apply_recompute(Stage(), "full", layers=layers)
