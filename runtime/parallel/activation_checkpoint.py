"""Activation recompute per the plan's `recompute` policy.

full       every decoder block runs under torch.utils.checkpoint (non-reentrant): only its input
           is kept, the block is recomputed in backward.
selective  delegated to `vlac.runtime.recompute.apply_recompute(model, policy)` (the model
           library's op-level policy: attention core and other cheap-to-recompute, large-to-store
           ops); a runtime without that module refuses the plan instead of silently saving more.

The block's forward is wrapped on the instance, so parameter names (and checkpoints) do not change.
"""

from __future__ import annotations

import functools

import torch.nn as nn
from torch.utils.checkpoint import checkpoint

POLICIES = ("none", "selective", "full")


def _checkpointed(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


def apply_activation_checkpointing(model: nn.Module, policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"plan.recompute = {policy!r}; choose one of {', '.join(POLICIES)}")
    if policy == "none":
        return
    if policy == "selective":
        try:
            from vlac.runtime.recompute import apply_recompute
        except ImportError:
            raise ValueError("plan.recompute = 'selective' needs vlac.runtime.recompute, which this installation "
                             "lacks; re-plan with --pin recompute=full (or none)") from None
        apply_recompute(model, policy)
        return
    for block in model.layers:
        block.forward = _checkpointed(block.forward)
