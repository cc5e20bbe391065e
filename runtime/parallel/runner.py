"""Forward and backward over the micro-batches of one optimiser step, without pipelining.

Loss scaling, shared with the pipeline runner: `ar_loss` (and `mtp_loss`) is normalised by the global count of
target tokens, so summing it over micro-batches and replicas gives the global mean; the
data-parallel gradient average divides by dp, which the factor dp undoes. The MoE auxiliary losses
are per-micro-batch means, weighted 1/m here and averaged over replicas by the same division.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

import torch
import torch.nn as nn

from vlac.spec import Experiment

from ..losses import Objective
from .data_parallel import no_sync
from .stats import StepStats


class DirectRunner:
    def __init__(self, exp: Experiment, module: nn.Module, dp: int, moe_rows: list[int], n_experts: int,
                 forward_context: Callable[[], ContextManager], device: torch.device):
        self.module = module  # possibly DDP-wrapped
        self.objective = Objective(module, exp).to(device)
        self.dp, self.moe_rows, self.n_experts = dp, moe_rows, n_experts
        self.n_modalities = len(exp.modalities)
        self.mtp_depth = exp.losses.mtp.depth if exp.losses.mtp else 0
        self.forward_context = forward_context
        self.device = device

    def forward_backward(self, batches: list[dict[str, torch.Tensor]]) -> StepStats:
        return self._run(batches, backward=True)

    def forward(self, batches: list[dict[str, torch.Tensor]]) -> StepStats:
        """The same losses as `forward_backward`, without its backward (evaluation; the caller
        runs it under torch.no_grad, so no activations are kept and no gradient is made)."""
        return self._run(batches, backward=False)

    def _run(self, batches: list[dict[str, torch.Tensor]], backward: bool) -> StepStats:
        m = len(batches)
        stats = StepStats(self.n_modalities, len(self.moe_rows), self.n_experts, self.device, self.mtp_depth)
        for i, batch in enumerate(batches):
            with no_sync(self.module, last_micro=i == m - 1) if backward else nullcontext():
                with self.forward_context():
                    out = self.objective(batch)
                if backward:
                    ((out["ar_loss"] + out["mtp_loss"]) * self.dp + out["aux_loss"] / m).backward()
            stats.add_loss(out, 1.0 / (m * self.dp))
            stats.add_moe(out, self.moe_rows, 1.0 / (m * self.dp))
        return stats
