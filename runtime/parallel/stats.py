"""What one optimiser step measured, summed over micro-batches and then over ranks.

Each rank adds what it alone computed: the loss terms on the rank that ran the loss (the last
pipeline stage; one tensor-parallel rank, since all of them compute the same loss), the MoE
diagnostics of the layers it holds. A sum over the whole world is then the global figure, however
the model is laid out.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..distributed import all_reduce_sum
from .mesh import Mesh

REPLICA_DIMS = ("dp_replicate", "dp_shard")  # the data-parallel coordinates: which samples a rank reads


def sum_over_replicas(t: torch.Tensor, mesh: Mesh) -> torch.Tensor:
    """Sum `t` in place over the data-parallel replicas and return it. The other ranks of a replica
    (tensor, context, pipeline) read the same samples: including them would count them again."""
    for name in REPLICA_DIMS:
        group = mesh.group(name)
        if group is not None:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


class StepStats:
    def __init__(self, n_modalities: int, n_moe_layers: int, n_experts: int, device: torch.device,
                 mtp_depth: int = 0):
        self.n_mod, self.n_moe, self.n_exp = n_modalities, n_moe_layers, n_experts
        self.ar = torch.zeros((), device=device)
        self.mtp = torch.zeros((), device=device)  # the weighted MTP term, normalised like ar (runtime/mtp.py)
        self.mtp_sum = torch.zeros(mtp_depth, device=device)  # per depth: cross-entropy sum and target count
        self.mtp_cnt = torch.zeros(mtp_depth, device=device)
        self.aux = torch.zeros((), device=device)
        self.mod_sum = torch.zeros(n_modalities, device=device)
        self.mod_cnt = torch.zeros(n_modalities, device=device)
        self.loads = torch.zeros(n_moe_layers, max(n_experts, 1), device=device)
        self.entropy = torch.zeros(n_moe_layers, device=device)
        self.dropped = torch.zeros((), device=device)

    def add_loss(self, out: dict[str, torch.Tensor], micro_weight: float) -> None:
        """The loss terms of one micro-batch (an `Objective` output). `micro_weight` = 1 /
        (micro-batches x dp): the auxiliary losses are means over micro-batches and replicas."""
        self.ar += out["ar_loss"].detach().float()
        self.mtp += out["mtp_loss"].detach().float()
        if "mtp_ce_sum" in out:
            self.mtp_sum += out["mtp_ce_sum"].detach().float()
            self.mtp_cnt += out["mtp_count"].detach().float()
        self.aux += out["aux_loss"].detach().float() * micro_weight
        self.mod_sum += out["modality_loss_sum"].detach().float()
        self.mod_cnt += out["modality_count"].detach().float()

    def add_moe(self, out: dict[str, torch.Tensor], layer_rows: list[int], micro_weight: float) -> None:
        """Expert loads and dropped fractions of one micro-batch for the MoE layers `layer_rows`
        (their positions among all MoE layers); the dropped fraction is a mean like the aux losses."""
        if "expert_load" in out and layer_rows:
            self.loads[layer_rows] += out["expert_load"].detach().float()
            if "router_entropy" in out:
                self.entropy[layer_rows] += out["router_entropy"].detach().float() * micro_weight
            # mean over all MoE layers of the model, whichever stage holds them
            self.dropped += out["dropped_fraction"].detach().float().sum() / self.n_moe * micro_weight

    def all_reduce(self, owner: bool) -> "StepStats":
        """Sum over the world; ranks that are not owners of the loss contribute nothing."""
        d = self.mtp_sum.numel()
        flat = torch.cat([self.mtp.view(1), self.mtp_sum, self.mtp_cnt, self.ar.view(1), self.aux.view(1), self.mod_sum,
                          self.mod_cnt, self.loads.flatten(), self.entropy, self.dropped.view(1)])
        if not owner:
            flat.zero_()
        all_reduce_sum(flat)
        self.mtp, self.mtp_sum, self.mtp_cnt = flat[0], flat[1:1 + d], flat[1 + d:1 + 2 * d]
        flat = flat[1 + 2 * d:]
        n, m = self.n_mod, self.loads.numel()
        self.ar, self.aux = flat[0], flat[1]
        self.mod_sum, self.mod_cnt = flat[2:2 + n], flat[2 + n:2 + 2 * n]
        self.loads = flat[2 + 2 * n:2 + 2 * n + m].view_as(self.loads)
        self.entropy = flat[2 + 2 * n + m:-1]
        self.dropped = flat[-1]
        return self

    def moe_outputs(self) -> dict[str, torch.Tensor]:
        """The step's MoE figures in the model's output format (for diagnostics.moe_metrics)."""
        if not self.n_moe:
            return {}
        return {"expert_load": self.loads, "router_entropy": self.entropy, "dropped_fraction": self.dropped}

    def mtp_loss(self) -> dict[str, float]:
        """Mean cross-entropy per target of each MTP depth ("1" predicts the token 2 ahead)."""
        return {str(k + 1): float(self.mtp_sum[k] / self.mtp_cnt[k]) for k in range(self.mtp_sum.numel())
                if self.mtp_cnt[k] > 0}

    def modality_loss(self, names: list[str]) -> dict[str, float]:
        return {name: float(self.mod_sum[i] / self.mod_cnt[i]) for i, name in enumerate(names) if self.mod_cnt[i] > 0}
