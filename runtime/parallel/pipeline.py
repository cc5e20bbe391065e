"""Pipeline parallelism with torch.distributed.pipelining, per the plan's stage split and schedule.

`plan.stage_split` lists the layer ids of each (virtual) stage: -1 is the input side (token
embedding, positions, continuous projectors, video embeddings), 0..L-1 the decoder blocks, L the
output side (final norm, head, loss heads and the loss). With v virtual stages per rank, rank r
runs stages r, r+pp, ... (the looped placement of ScheduleInterleaved1F1B).

Each stage holds a *view* of the model: an instance of the model's class that shares only the
modules of that stage, under their names in the whole model (`layers.7.attn.wq.weight` stays
`layers.7.attn.wq.weight`, so checkpoints move between layouts). The stage runs the model's own
pieces: `embed_inputs` on the first stage, `attention_mask` and its blocks on every stage, the
final norm and head on the last. Every stage receives the micro-batch fields as keyword
arguments (masks are rebuilt per stage); only the hidden state crosses stage boundaries.

The loss runs on the last stage (`Objective` on its logits and hidden state). The MoE auxiliary
losses of each stage join the backward pass where they arise: `_AttachAux` ties them to the
stage output (their gradient is the constant loss weight), as Megatron does.

Not pipelined here (refused with a message): late fusion (cross-attention layers read media on
every stage), masked-generation and flow-matching losses (they corrupt the inputs of the first
stage for a loss on the last), tied embeddings.
"""

from __future__ import annotations

from typing import Callable, ContextManager

import torch
import torch.nn as nn

from vlac.spec import Experiment

from ..losses import Objective
from .stats import StepStats

INPUT_SIDE = ("embed", "pos_embed", "projectors", "video")
OUTPUT_SIDE = ("norm", "head", "contrastive")


class SparseLayers(nn.ModuleDict):
    """Some blocks of a ModuleList under their original indices (so `layers.7.attn.wq.weight`
    keeps its name); iterates over the blocks, as the ModuleList it replaces."""

    def __iter__(self):
        return iter(self._modules.values())


def check_pipelinable(exp: Experiment, model: nn.Module) -> None:
    problems = []
    if exp.fusion.mode == "late":
        problems.append("fusion.mode: late (cross-attention layers read the media on every stage)")
    if exp.losses.masked or exp.losses.flow_matching:
        problems.append("losses.masked / losses.flow_matching (the first stage's inputs are corrupted for the last stage's loss)")
    if getattr(model.head, "weight", None) is model.embed.weight:
        problems.append("backbone.tied_embeddings (the first and last stages would share one weight)")
    known = set(INPUT_SIDE + OUTPUT_SIDE + ("layers",))
    unknown = sorted(n for n, m in model.named_children() if n not in known and any(True for _ in m.parameters()))
    if unknown or model._parameters:
        problems.append(f"model parts {unknown or list(model._parameters)} (this runtime places {', '.join(INPUT_SIDE)} "
                        f"on the first stage and {', '.join(OUTPUT_SIDE)} on the last)")
    if problems:
        raise ValueError("pipeline parallelism (plan.pp > 1) does not support " + "; ".join(problems)
                         + ". Re-plan with --pin pp=1")


def model_view(model: nn.Module, layer_ids: list[int], first: bool, last: bool) -> nn.Module:
    """An instance of type(model) sharing the modules of one stage (see the module docstring);
    modules without parameters (e.g. rotary tables) and non-persistent buffers go everywhere."""
    view = object.__new__(type(model))
    nn.Module.__init__(view)
    plain = set(vars(nn.Module()))
    for key, value in vars(model).items():
        if key not in plain:
            object.__setattr__(view, key, value)
    view.training = model.training
    for name, buf in model._buffers.items():
        view.register_buffer(name, buf, persistent=name not in model._non_persistent_buffers_set)
    for name, child in model.named_children():
        keep = (name not in INPUT_SIDE or first) and (name not in OUTPUT_SIDE or last)
        if name == "layers":
            child = SparseLayers({str(i): model.layers[i] for i in layer_ids})
        elif not keep:
            child = None
        setattr(view, name, child)
    return view


class _AttachAux(torch.autograd.Function):
    """Returns `y` unchanged; in backward also gives `aux` the gradient `weight`."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, aux: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        ctx.aux_meta = (aux.shape, aux.dtype, aux.device)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        shape, dtype, device = ctx.aux_meta
        return grad, torch.full(shape, ctx.weight, dtype=dtype, device=device), None


class StageModule(nn.Module):
    """What a PipelineStage runs: hidden state (or nothing, on the first stage) and the
    micro-batch fields in; hidden state out, or (logits, hidden) from the last stage. Keeps the
    MoE diagnostics of each call in `records`."""

    def __init__(self, view: nn.Module, first: bool, last: bool, moe_rows: list[int],
                 forward_context: Callable[[], ContextManager]):
        super().__init__()
        self.view = view
        self.first, self.last = first, last
        self.moe_rows = moe_rows
        self.forward_context = forward_context
        self.aux_weight = 1.0
        self.records: list[dict[str, torch.Tensor]] = []

    def forward(self, hidden: torch.Tensor | None = None, **batch: torch.Tensor):
        m = self.view
        with self.forward_context():
            x = m.embed_inputs(batch) if self.first else hidden
            mask = m.attention_mask(batch)
            stream = m.second_stream[batch["modality"]] if getattr(m, "dual", False) else None
            aux = x.new_zeros((), dtype=torch.float32)
            loads, drops, entropy = [], [], []
            for block in m.layers:
                x, a, load, dropped = block(x, mask) if stream is None else block(x, mask, stream)
                if a is not None:
                    aux = aux + a
                    loads.append(load)
                    drops.append(dropped)
                    entropy.append(block.mlp.router_entropy.detach().clone())
            if self.last:
                h = m.norm(x)
                x = (m.head(h), h)
        if loads:
            self.records.append({"aux_loss": aux.detach(), "expert_load": torch.stack(loads).detach(),
                                 "dropped_fraction": torch.stack(drops).detach(), "router_entropy": torch.stack(entropy)})
        if not aux.requires_grad:
            return x
        if self.last:
            return _AttachAux.apply(x[0], aux, self.aux_weight), x[1]
        return _AttachAux.apply(x, aux, self.aux_weight)


class _GivenOutputs(nn.Module):
    """Lets `Objective` score logits and hidden states computed by the last stage; `contrastive`
    is the model's head (the loss calls it through its `model`)."""

    def __init__(self, view: nn.Module | None):
        super().__init__()
        self.__dict__["view"] = view  # not a submodule: its parameters belong to the stage

    @property
    def contrastive(self):
        return self.view.contrastive

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = batch["logits"]
        return {"logits": logits, "hidden": batch["hidden"], "aux_loss": logits.new_zeros((), dtype=torch.float32)}


class PipelineLoss:
    """loss_fn(outputs, target) of the schedule on the last stage: outputs = (logits, hidden),
    target packs targets, target modality and modality ([B, S, 3]). Keeps each call's loss terms
    in `records`."""

    def __init__(self, exp: Experiment, view: nn.Module | None, device: torch.device):
        self.objective = Objective(_GivenOutputs(view), exp).to(device)
        self.loss_norm: torch.Tensor | None = None
        self.dp, self.m = 1, 1
        self.records: list[dict[str, torch.Tensor]] = []

    def __call__(self, outputs, target: torch.Tensor) -> torch.Tensor:
        logits, hidden = outputs
        out = self.objective({"logits": logits, "hidden": hidden, "targets": target[..., 0],
                              "target_modality": target[..., 1], "modality": target[..., 2],
                              "loss_norm": self.loss_norm})
        self.records.append({k: v.detach() for k, v in out.items()})
        # scaled as in runner.py: ar x dp, the other (non-MoE) auxiliary losses / m
        return out["ar_loss"] * self.dp + out["aux_loss"] / self.m


def stage_ids(pp_rank: int, pp: int, virtual: int) -> list[int]:
    return [pp_rank + i * pp for i in range(virtual)]


def split_layers(stage_split: list[list[int]], n_layers: int, n_stages: int) -> list[list[int]]:
    """Decoder block ids per stage from plan.stage_split; checks the split covers the model."""
    if len(stage_split) != n_stages:
        raise ValueError(f"plan.stage_split has {len(stage_split)} chunks but pp x virtual_stages = {n_stages}; re-emit the program")
    flat = [i for chunk in stage_split for i in chunk]
    if flat != list(range(-1, n_layers + 1)):
        raise ValueError(f"plan.stage_split {stage_split} does not list -1..{n_layers} in order "
                         f"(the model has {n_layers} layers); re-emit the program for this spec")
    return [[i for i in chunk if 0 <= i < n_layers] for chunk in stage_split]


class PipelineRunner:
    def __init__(self, exp: Experiment, schedule, stages: list[StageModule], loss: PipelineLoss, dp: int,
                 n_moe: int, n_experts: int, device: torch.device):
        self.exp, self.schedule, self.stages, self.loss = exp, schedule, stages, loss
        self.dp, self.n_moe, self.n_experts, self.device = dp, n_moe, n_experts, device

    def forward_backward(self, batches: list[dict[str, torch.Tensor]]) -> StepStats:
        m = len(batches)
        for st in self.stages:
            st.aux_weight, st.records = 1.0 / m, []
        self.loss.dp, self.loss.m, self.loss.loss_norm, self.loss.records = self.dp, m, batches[0]["loss_norm"], []
        fields = {k: torch.cat([b[k] for b in batches]) for k in batches[0] if batches[0][k].dim() > 0}
        target = torch.stack([fields["targets"], fields["target_modality"], fields["modality"]], dim=-1)
        self.schedule.step(target=target, return_outputs=False, **fields)
        # the first step also runs each stage (and the loss) once on placeholder tensors to infer
        # the shapes sent between stages: only the last m calls are the micro-batches
        stats = StepStats(len(self.exp.modalities), self.n_moe, self.n_experts, self.device)
        weight = 1.0 / (m * self.dp)
        for record in self.loss.records[-m:]:
            stats.add_loss(record, weight)
        for st in self.stages:
            for record in st.records[-m:]:
                stats.add_moe(record, st.moe_rows, weight)
                stats.aux += record["aux_loss"].float() * weight
        return stats


def build_pipeline(exp: Experiment, model: nn.Module, plan: dict, mesh, moe_rows_of: dict[int, int],
                   n_experts: int, forward_context, device: torch.device, shard) -> tuple[PipelineRunner, nn.Module]:
    """Stages of this rank, their schedule, and the view that holds all of this rank's parameters
    (for the optimiser and checkpoints). `shard(stage_module, blocks)` applies data parallelism."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

    check_pipelinable(exp, model)
    p = plan["plan"]
    pp, v = p["pp"], p["virtual_stages"]
    n_stages = pp * v
    per_stage = split_layers(p["stage_split"], len(model.layers), n_stages)
    mine = stage_ids(mesh.pp_rank, pp, v)
    last_view = None
    stages, modules, held = [], [], []
    for s in mine:
        first, last = s == 0, s == n_stages - 1
        view = model_view(model, per_stage[s], first, last)
        last_view = view if last else last_view
        rows = [moe_rows_of[i] for i in per_stage[s] if i in moe_rows_of]
        module = StageModule(view, first, last, rows, forward_context)
        shard(module, [model.layers[i] for i in per_stage[s]])
        modules.append(module)
        held += per_stage[s]
        stages.append(PipelineStage(module, s, n_stages, device, group=mesh.group("pp")))
    loss = PipelineLoss(exp, last_view, device)
    m = p["num_microbatches"]
    if v > 1:
        schedule = ScheduleInterleaved1F1B(stages, n_microbatches=m, loss_fn=loss, scale_grads=False)
    else:
        cls = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}[p["schedule"]]
        schedule = cls(stages[0], n_microbatches=m, loss_fn=loss, scale_grads=False)
    holder = model_view(model, sorted(held), first=0 in mine, last=n_stages - 1 in mine)
    runner = PipelineRunner(exp, schedule, modules, loss, p["dp"], len(moe_rows_of), n_experts, device)
    return runner, holder
