"""Activation recompute per the plan's `recompute` policy (none | selective | full), on every
block of the stage or on its first k (`recompute_layers_per_stage`).

The policies are defined, and costed by the compiler, in the model library's
`vlac.runtime.recompute.apply_recompute` (selective keeps GEMM and attention outputs and recomputes
the rest of each block; full keeps only each block's input); this applies it. Should that module
be missing, `full` falls back to torch.utils.checkpoint around each decoder block and `selective`
is refused rather than silently saving more or less than planned.

Blocks are wrapped on the instance, so parameter names (and checkpoints) do not change.
"""

from __future__ import annotations

import functools

import torch.nn as nn
from torch.utils.checkpoint import checkpoint

POLICIES = ("none", "selective", "full")


def apply_activation_checkpointing(model: nn.Module, policy: str, layers: int | None = None) -> None:
    """`policy` on every block of this stage, or on its first `layers` blocks
    (plan.recompute_layers_per_stage: full recompute of part of a stage)."""
    if policy not in POLICIES:
        raise ValueError(f"plan.recompute = {policy!r}; choose one of {', '.join(POLICIES)}")
    try:
        from vlac.runtime.recompute import apply_recompute
    except ImportError:
        apply_recompute = None
    if apply_recompute is not None:
        apply_recompute(model, policy, layers)
    elif policy == "selective":
        raise ValueError("plan.recompute = 'selective' needs vlac.runtime.recompute, which this installation "
                         "lacks; re-plan with --pin recompute=full (or none)")
    elif policy == "full":
        for block in list(model.layers)[:layers]:
            block.forward = _checkpointed(block.forward)


def _checkpointed(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run
