"""Per-modality gradient clipping (optimizer.per_modality_clip): each modality's share of the AR
loss gets its own gradient, clipped to optimizer.grad_clip, and the clipped gradients are summed.
A modality with rare, large gradients (actions, say) then cannot dominate the update, nor be
scaled down by another modality's spike.

The loss splits into the terms of `diagnostics.loss_terms`: one AR term per modality
(ar = sum_j w_j * sum_{t in j} ce_t / loss_norm) and one per auxiliary objective (MoE, contrastive,
masked, flow). Each term is backpropagated on its own (one backward pass per term and micro-batch
over one retained forward graph) into its own gradient buffer, accumulated over the step's
micro-batches, and clipped as a whole-batch gradient. DDP and FSDP tie one gradient reduction to each
forward, so this mode runs plain data parallelism without DDP and averages each group's gradient
over the dp ranks itself; sharded data parallelism (FSDP), pipelines and expert parallelism are
refused with a message.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from vlac.spec import Experiment

from ..diagnostics import loss_terms
from .stats import StepStats


def check_layout(dims) -> None:
    if dims.pp > 1 or dims.ep > 1 or dims.zero > 0 or (dims.dp > 1 and dims.tp > 1):
        raise ValueError("optimizer.per_modality_clip runs one backward pass per modality, which this runtime "
                         "supports with replicated data parallelism (zero 0) or tensor parallelism, not with "
                         f"{dims.summary()} zero {dims.zero}; re-plan (e.g. --pin pp=1,ep=1,zero=0) or turn it off")


class ModalityClipper:
    def __init__(self, exp: Experiment, model):
        check_layout(model.dims)
        self.model = model
        self.runner = model.runner
        self.exp = exp
        self.names = list(exp.modalities)
        self.max_norm = exp.optimizer.grad_clip or float("inf")
        self.dp_group = model.mesh.group("dp_replicate")

    def forward_backward(self, batches: list[dict[str, torch.Tensor]]) -> tuple[StepStats, dict[str, float]]:
        r, pm = self.runner, self.model
        params = pm.parameters()
        buffers: dict[str, list[torch.Tensor | None]] = {}
        m = len(batches)
        stats = StepStats(len(self.names), len(r.moe_rows), r.n_experts, r.device, r.mtp_depth)
        for batch in batches:
            with r.forward_context():
                out = r.objective(batch)
            # scaled as in runner.py: ar and mtp x dp and the auxiliary terms / m, then averaged over dp
            terms = {name: t * (r.dp if name.startswith("ar.") or name == "mtp" else 1.0 / m)
                     for name, t in loss_terms(out, self.exp).items()}
            live = list(terms.items())
            for k, (group, term) in enumerate(live):
                buffers.setdefault(group, [None] * len(params))
                term.backward(retain_graph=k < len(live) - 1)
                self._take(params, buffers[group])
            stats.add_loss(out, 1.0 / (m * r.dp))
            stats.add_moe(out, r.moe_rows, 1.0 / (m * r.dp))
        norms = {}
        groups = list(buffers)
        for group in groups:
            self._give(params, buffers[group])
            self._average_over_dp(params)
            norm = pm.grad_norm()
            pm.clip_(self.max_norm, norm)
            norms[group] = norm
            self._take(params, buffers[group])
        for p, parts in zip(params, zip(*(buffers[g] for g in groups))):
            present = [t for t in parts if t is not None]
            total = None
            for t in present:
                total = t if total is None else total + t
            p.grad = total
        return stats.all_reduce(pm.owns_loss), norms

    @torch.no_grad()
    def _average_over_dp(self, params) -> None:
        if self.dp_group is None:
            return
        for p in params:
            if p.grad is not None:
                g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
                dist.all_reduce(g, group=self.dp_group)
                g.div_(self.model.dims.dp)

    @staticmethod
    def _take(params, buffer) -> None:
        """Move .grad into `buffer` (adding to what is there)."""
        for i, p in enumerate(params):
            if p.grad is None:
                continue
            buffer[i] = p.grad if buffer[i] is None else buffer[i] + p.grad
            p.grad = None

    @staticmethod
    def _give(params, buffer) -> None:
        for p, g in zip(params, buffer):
            p.grad = g
