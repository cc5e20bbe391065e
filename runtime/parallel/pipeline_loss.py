"""The loss of a pipeline: `Objective` on the last stage, with the whole micro-batch it scores.

The schedule hands the loss function only the stage's output and a target tensor split like the
inputs. The target here is each sample's micro-batch index; the loss looks up that micro-batch
(all of its fields, uncorrupted), so every objective of the spec sees what it sees in one
process.

Corrupted inputs (losses.masked replaces tokens by <mask>, losses.flow_matching noises patches):
the first stage needs the corrupted inputs and the last stage the corruption itself (which tokens
were masked, the noise of the velocity target). `Objective` derives it from (train.seed, the
sample's global index, position) (vlac.runtime.noise), so both stages compute the same corruption
from the micro-batch alone, as one process does; nothing extra crosses stage boundaries.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vlac.spec import Experiment

from ..batch import batch_keys
from ..losses import Objective


def corrupts_inputs(exp: Experiment) -> bool:
    return bool(exp.losses.masked or exp.losses.flow_matching)


def corrupted_inputs(objective: Objective, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model inputs `Objective.forward` builds from `batch` (the same corruption)."""
    losses = objective.exp.losses
    inputs = {k: batch[k] for k in batch_keys(objective.exp)}
    if losses.masked:
        inputs, _ = objective._mask_tokens(inputs)
    if losses.flow_matching:
        inputs, _ = objective._noise_patches(inputs)
    return inputs


class _GivenOutputs(nn.Module):
    """Stands in for the model inside `Objective`: returns the last stage's outputs of the current
    micro-batch. `contrastive` and `flow` are the last stage's heads (the loss calls them)."""

    def __init__(self, view: nn.Module | None):
        super().__init__()
        self.__dict__["view"] = view  # not a submodule: its parameters belong to the stage
        self.outputs: dict[str, torch.Tensor] = {}

    @property
    def contrastive(self):
        return self.view.contrastive

    @property
    def flow(self):
        return self.view.flow

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.outputs


class PipelineLoss:
    """loss_fn(outputs, target) of the schedule on the last stage: outputs = (logits, hidden),
    target = each sample's micro-batch index. The runner calls `prepare` before each step. Keeps
    each call's loss terms in `records`."""

    def __init__(self, exp: Experiment, view: nn.Module | None, device: torch.device):
        self.given = _GivenOutputs(view)
        self.objective = Objective(self.given, exp).to(device)
        self.device = device
        self.dp, self.m = 1, 1
        self.batches: list[dict[str, torch.Tensor]] = []
        self.records: list[dict[str, torch.Tensor]] = []

    def prepare(self, batches: list[dict[str, torch.Tensor]], dp: int) -> list[dict[str, torch.Tensor]]:
        """Start a step: remember the micro-batches and return the stage inputs of each (the
        corrupted ones, see the module docstring)."""
        self.batches, self.dp, self.m, self.records = batches, dp, len(batches), []
        if not corrupts_inputs(self.objective.exp):
            return batches
        return [{**batch, **corrupted_inputs(self.objective, batch)} for batch in batches]

    def __call__(self, outputs, target: torch.Tensor) -> torch.Tensor:
        logits, hidden, *rest = outputs
        depth = self.objective.exp.losses.mtp.depth if self.objective.exp.losses.mtp else 0
        ahead, media = rest[:depth], rest[depth:]  # MTP logits; late fusion: the media entries, pooled here
        i = int(target[0])
        self.given.outputs = {"logits": logits, "hidden": hidden,
                              "aux_loss": logits.new_zeros((), dtype=torch.float32)}
        if ahead:
            self.given.outputs["mtp_logits"] = list(ahead)
        if media:
            view = self.given.view
            pooled = view.pool_media(media[0], view.media_masks(self.batches[i]))
            self.given.outputs.update({f"pooled.{n}": p for n, p in pooled.items()})
        out = self.objective(self.batches[i])
        self.given.outputs = {}
        self.records.append({k: v.detach() for k, v in out.items()})
        # scaled as in runner.py: ar x dp, the other (non-MoE) auxiliary losses / m
        return (out["ar_loss"] + out["mtp_loss"]) * self.dp + out["aux_loss"] / self.m
