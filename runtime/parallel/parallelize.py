"""Apply a plan to a model: one entry point, in the order that composes.

    FP8 -> tensor/sequence parallel -> context parallel -> expert parallel -> activation recompute
        -> pipeline stages -> data parallel (DDP, or FSDP2 per block and per stage)

A model built with `build_model(..., deferred=True)` arrives with its weight matrices on the meta
device: the layout is applied to shapes, and only then does each rank allocate and initialise the
pieces it holds (runtime/materialize.py), with the values one process has; before DDP, which
needs whole tensors. A model built initialised (the same seed on every rank) is sharded as is and
reproduces the single-process parameters just the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from vlac.spec import Experiment

from ..distributed import DistEnv
from ..materialize import has_meta_weights, materialize
from ..mtp import mtp_blocks
from ..precision import Precision
from .activation_checkpoint import apply_stage_recompute
from .context_parallel import apply_context_parallel, average_grads_over_cp
from .data_parallel import average_grads, loss_heads, replicate_module, shard_module, uses_ddp
from .moe_local_routing import locally_routed_params, sum_grads_over_tp
from .expert_parallel import (apply_expert_parallel, expert_grad_divisor, expert_mesh, folded_dims, fsdp_expert_scale,
                              reduce_expert_grads, rescale_expert_grads, shard_experts_over_edp)
from .grads import clip_, grad_norm
from .mesh import Mesh, ParallelDims, build_mesh
from .runner import DirectRunner
from .stats import StepStats
from .support import check_runnable
from .tensor_parallel import apply_tensor_parallel


@dataclass
class ParallelModel:
    """The model as laid out on this rank.

    `model` holds every parameter this rank trains under the names of the whole model (give it to
    the optimiser and to checkpoints); `forward_backward` runs one step's micro-batches and leaves
    the gradients ready for the optimiser."""

    model: nn.Module
    mesh: Mesh
    runner: Any
    precision: Precision
    moe_rows: dict[int, int]
    expert_params: list[nn.Parameter] = field(default_factory=list)  # EP, gradients reduced here
    fsdp_expert_params: list[nn.Parameter] = field(default_factory=list)  # EP under FSDP over edp
    replicated_params: list[nn.Parameter] = field(default_factory=list)  # left out of FSDP, averaged here
    mirrored_params: list[nn.Parameter] = field(default_factory=list)  # copies another pp rank also holds (tied)
    routed_locally: list[nn.Parameter] = field(default_factory=list)  # MoE layers routing their tp shard
    materialized_bytes: int = 0  # weights allocated here for a deferred model (this rank's share)

    @property
    def dims(self) -> ParallelDims:
        return self.mesh.dims

    @property
    def owns_loss(self) -> bool:
        """One tensor- and context-parallel rank reports the loss (all compute the same one)."""
        return self.mesh.tp_rank == 0 and self.mesh.cp_rank == 0

    def forward_backward(self, batches: list[dict[str, torch.Tensor]]) -> StepStats:
        stats = self.runner.forward_backward(batches)
        self.finish_gradients()
        return stats.all_reduce(self.owns_loss)

    def forward(self, batches: list[dict[str, torch.Tensor]]) -> StepStats:
        """The losses of one step's micro-batches without a backward (evaluation, under no_grad)."""
        return self.runner.forward(batches).all_reduce(self.owns_loss)

    def finish_gradients(self) -> None:
        """The data-parallel reductions the wrappers (DDP, FSDP) do not do."""
        if self.expert_params:
            reduce_expert_grads(self.expert_params, self.mesh.edp_group, expert_grad_divisor(self.dims))
        if self.fsdp_expert_params:
            rescale_expert_grads(self.fsdp_expert_params, fsdp_expert_scale(self.dims))
        if self.replicated_params:
            average_grads(self.replicated_params, self.mesh.group("dp_shard") or self.mesh.group("dp_replicate"),
                          self.dims.dp)
        if self.routed_locally:  # each tp rank's share of the whole micro-batch's gradient
            sum_grads_over_tp(self._not_folded(self.routed_locally, "tp"), self.mesh.group("tp"))
        if self.dims.cp > 1:  # cp ranks are replicas of the parameters (context_parallel.py)
            average_grads_over_cp(self._not_folded(self.parameters(), "cp"), self.mesh.group("cp"), self.dims.cp)

    def _not_folded(self, params: list[nn.Parameter], dim: str) -> list[nn.Parameter]:
        """`params` less the experts whose ep x edp ranks span `dim` (reduced over it already)."""
        if dim not in folded_dims(self.dims):
            return params
        experts = {id(p) for p in self.expert_params + self.fsdp_expert_params}
        return [p for p in params if id(p) not in experts]

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def grad_norm(self) -> float:
        counted = [p for p in self.parameters() if all(p is not q for q in self.mirrored_params)]  # each weight once
        return grad_norm(counted, self.mesh.group("pp"))

    def clip_(self, max_norm: float, norm: float) -> None:
        clip_(self.parameters(), max_norm, norm)

    def moe_layers(self) -> list[tuple[int, nn.Module]]:
        """(row among all MoE layers, layer) for the MoE layers this rank holds."""
        layers = self.model.layers
        items = [*(layers.items() if isinstance(layers, nn.ModuleDict) else enumerate(layers)), *mtp_blocks(self.model)]
        return [(self.moe_rows[int(i)], block.mlp) for i, block in items if int(i) in self.moe_rows]


def moe_rows(model: nn.Module) -> tuple[dict[int, int], int]:
    """Layer index -> position among the MoE layers, and the number of experts. The MTP modules'
    blocks follow the decoder's (runtime/mtp.py), as in the model's expert_load rows."""
    rows, experts = {}, 0
    for i, block in [*enumerate(model.layers), *mtp_blocks(model)]:
        if hasattr(block.mlp, "router") and hasattr(block.mlp, "experts"):
            rows[i] = len(rows)
            experts = block.mlp.router.weight.size(0)
    return rows, experts


def parallelize(model: nn.Module, exp: Experiment, plan: dict[str, Any], env: DistEnv,
                fp8_backend: str = "auto") -> ParallelModel:
    """Lay `model` (built identically on every rank) out as plan.json says."""
    check_runnable(exp, plan.get("plan", plan))  # the limits the planner also honours (support.py)
    # expert parallelism folds over the ranks holding distinct tokens of the MoE layers (mesh.py)
    dims = ParallelDims.from_plan(plan).with_moe()
    dims.check(env.world)
    mesh = build_mesh(dims, env.device.type)
    precision = Precision.for_run(exp, plan, env.device, fp8_backend)
    rows, n_experts = moe_rows(model)
    deferred = getattr(model, "deferred_init", None) if has_meta_weights(model) else None

    precision.convert(model, plan)  # before TP: the Float8 tensor-parallel styles split Float8Linear modules
    if dims.tp > 1:
        apply_tensor_parallel(model, mesh.sub("tp"), dims.sequence_parallel, expert_tp=dims.etp > 1,
                              tp_plan=plan.get("plan", plan).get("tp_plan"))  # train.py's TP_PLAN
    if dims.cp > 1:
        apply_context_parallel(model, exp, mesh.sub("cp"), expert_tp=dims.etp > 1)
    experts_mesh = expert_mesh(mesh)  # by expert over ep, by inner width over tp (etp)
    expert_params = apply_expert_parallel(model, experts_mesh) if experts_mesh is not None else []
    # per pipeline rank (the planner may recompute more on early stages, which hold more
    # activations), on the blocks of the stages this rank runs: with pipeline stages, per stage
    # after the split (build_pipeline), partial full recompute naming the rank's own layers
    policy, full_layers = dims.recompute[mesh.pp_rank], dims.full_layers(mesh.pp_rank)
    if dims.pp == 1:
        apply_stage_recompute(model, model, policy, full_layers)

    fsdp_experts: list[nn.Parameter] = []
    if expert_params and dims.zero >= 1 and mesh.edp_group is not None:
        # sharded like the rest of the model; FSDP then reduces their gradients over edp
        before, fsdp_experts = shard_experts_over_edp(model, mesh.experts["edp"], dims.zero >= 3)
        expert_params = [q for q in expert_params if all(q is not b for b in before)]
    # FSDP cannot shard 0-dim parameters (e.g. a contrastive temperature): keep them replicated
    # and average their gradients over dp here
    scalars = [q for q in model.parameters() if q.dim() == 0] if dims.dp > 1 and not uses_ddp(mesh) else []
    ignored = set(expert_params) | set(scalars)
    if dims.pp > 1:
        # imported here: torch.distributed.pipelining pulls in dynamo, sympy and triton (about a
        # quarter of a rank's start-up), which a run without pipeline stages never uses
        from .pipeline import build_pipeline

        def shard(stage_module, blocks):
            if dims.dp > 1:
                # loss heads are FSDP units on the last stage only (the first holds the flow head's
                # timestep embedding, which its forward calls directly)
                heads = loss_heads(stage_module.view) if stage_module.last else []
                shard_module(stage_module, blocks + heads, mesh, ignored)
        def recompute(stage_module):
            apply_stage_recompute(model, stage_module, policy, full_layers)
        runner, holder = build_pipeline(exp, model, plan, mesh, rows, n_experts, precision.forward_context,
                                        env.device, shard, recompute)
        # the stage modules carry the FSDP state; the holder names the parameters as the whole model does
        allocated = materialize(runner.stages, holder, deferred, env.device) if deferred else 0
        return ParallelModel(holder, mesh, runner, precision, rows, expert_params, fsdp_experts, scalars,
                             runner.mirrored_params, locally_routed_params(holder), allocated)

    wrapped = model
    if dims.dp > 1 and not uses_ddp(mesh):
        shard_module(model, list(model.layers) + list(model.mtp or []) + loss_heads(model), mesh, ignored)
    allocated = materialize([model], model, deferred, env.device) if deferred else 0
    if uses_ddp(mesh):
        # per-modality clipping averages each modality's gradient itself (modality_clip.py)
        if not exp.optimizer.per_modality_clip:
            wrapped = replicate_module(model, env.device)
    runner = DirectRunner(exp, wrapped, dims.dp, list(rows.values()), n_experts, precision.forward_context, env.device)
    return ParallelModel(model, mesh, runner, precision, rows, expert_params, fsdp_experts, scalars,
                         routed_locally=locally_routed_params(model), materialized_bytes=allocated)
