"""Activation recompute per pipeline rank, as the plan says: the rank's policy (none | selective |
full) on every block of the stages it runs, or full recompute of only some of its decoder layers.

The policies are defined, and costed by the compiler, in `vlac.runtime.recompute` (selective keeps
GEMM and attention outputs and recomputes the rest of each block; full keeps only each block's
input). Partial full recompute (plan.recompute_layers_per_stage: k of a rank's blocks, planned for
stacks with `stack.partial_recompute`) names its layers by the compiler's rule
(vlac.compiler.recompute_choice.full_recompute_layers: k spread over the rank's virtual chunks,
each chunk's first layers); the emitted train.py states them in RECOMPUTE and passes them here as
`recompute_full_layers`. Under partial recompute a rank's other blocks (a first stage's media
encoder layers included) keep what autograd saves.

Applied to the blocks one stage holds (the whole model without pipeline parallelism, else each of
the rank's stage views after the split), on the instance: parameter names and checkpoints do not
change.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import torch.nn as nn

from vlac.compiler.recompute_choice import planned_full_layers
from vlac.runtime.recompute import RECOMPUTE_POLICIES, iter_blocks, recompute_blocks

DECODER_BLOCK = re.compile(r"^layers\.(\d+)$")


def rank_full_layers(p: dict[str, Any]) -> tuple[tuple[int, ...] | None, ...]:
    """Per pipeline rank of plan.json's `plan` section: the decoder layers recomputed in full, or
    None for the rank's policy on every block. train.py's RECOMPUTE (`recompute_full_layers`,
    written by vlac.runtime.program.with_layout) when given, else the plan's per-rank counts."""
    given = p.get("recompute_full_layers")
    layers = given if given is not None else planned_full_layers(p)
    out = tuple(None if ids is None else tuple(sorted(int(i) for i in ids)) for ids in layers)
    split, pp = p.get("stage_split"), p["pp"]
    for rank, ids in enumerate(out):
        held = {i for chunk in (split or [])[rank::pp] for i in chunk}
        if ids is not None and split and not held.issuperset(ids):
            raise ValueError(f"train.py RECOMPUTE[{rank}] names decoder layers {sorted(set(ids) - held)} that pipeline "
                             f"rank {rank} does not hold (its stages: {[c for c in split[rank::pp]]}); list layers "
                             f"of the rank's own STAGES")
    return out


def apply_stage_recompute(model: nn.Module, stage: nn.Module, policy: str,
                          full_layers: Iterable[int] | None = None) -> int:
    """`policy` on the blocks of `model` that `stage` holds (`model` itself, or a pipeline stage
    built from it): on all of them, or with `full_layers` only on those decoder layers. Returns
    the number of blocks checkpointed."""
    if policy not in RECOMPUTE_POLICIES:
        raise ValueError(f"plan.recompute = {policy!r}; choose one of {', '.join(RECOMPUTE_POLICIES)}")
    held = {id(m) for m in stage.modules()}
    wanted = None if full_layers is None else set(full_layers)
    blocks, chosen = [], []
    for name, block in iter_blocks(model):
        if id(block) not in held:
            continue
        blocks.append(block)
        layer = DECODER_BLOCK.match(name)
        if wanted is None or (layer is not None and int(layer.group(1)) in wanted):
            chosen.append(block)
    return recompute_blocks(blocks, chosen, policy)

