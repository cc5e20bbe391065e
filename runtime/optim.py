"""Optimizer and learning-rate schedule from the spec."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor

from vlac.spec import Experiment

from .freeze import frozen_fields


def check_trainable(model: nn.Module, exp: Experiment) -> None:
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"nothing to train: {', '.join(frozen_fields(exp))} freeze every parameter of the model; "
                         f"set one of them to false (or add a trainable component, e.g. a projector)")


def build_optimizer(model: nn.Module, exp: Experiment) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (norm gains, biases and the router bias stay
    undecayed, as in GPT-2/Megatron). Frozen parameters (`freeze: true`, runtime/freeze.py) are
    left out: no update and no optimiser state. DTensor parameters (tensor/expert parallel, FSDP) and plain
    ones go into separate groups: the fused multi-tensor update cannot mix them."""
    o = exp.optimizer
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((p.dim() >= 2, isinstance(p, DTensor)), []).append(p)
    if not groups:
        if not getattr(model, "pipeline_part", False):
            check_trainable(model, exp)
        # a pipeline rank whose stages hold only frozen parameters (e.g. blocks of Flamingo's frozen
        # language model; build_pipeline checked the whole model): an update of nothing
        groups[(True, False)] = []
    param_groups = [{"params": params, "weight_decay": o.weight_decay if decay else 0.0}
                    for (decay, _), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]
    if o.name == "sgd":
        return torch.optim.SGD(param_groups, lr=o.lr, momentum=o.betas[0])
    return torch.optim.AdamW(param_groups, lr=o.lr, betas=o.betas, eps=o.eps, foreach=True)


def lr_factor(exp: Experiment, step: int) -> float:
    """Multiplier of the peak learning rate at `step` (0-based)."""
    s = exp.optimizer.schedule
    total = exp.train.total_steps
    if s.warmup_steps and step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.kind == "constant":
        return 1.0
    lo = s.min_lr_ratio
    span = max(1, total - s.warmup_steps)
    t = min(1.0, (step - s.warmup_steps) / span)
    if s.kind == "cosine":
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
    if s.kind == "linear":
        return 1 - (1 - lo) * t
    # wsd: stable at the peak, then a linear decay over the last decay_fraction of the steps
    decay_start = total - int(s.decay_fraction * total)
    if step < decay_start:
        return 1.0
    return 1 - (1 - lo) * (step - decay_start) / max(1, total - decay_start)


def build_scheduler(optimizer: torch.optim.Optimizer, exp: Experiment) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(exp, step))
