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
arguments (masks and packed rows' per-document positions are rebuilt per stage); only the hidden
state crosses stage boundaries.

The loss runs on the last stage (`Objective` on its logits and hidden state, pipeline_loss.py,
which also keeps masked-generation and flow-matching corruption equal to one process). The MoE
auxiliary losses of each stage join the backward pass where they arise: `_AttachAux` ties them to
the stage output (their gradient is the constant loss weight), as Megatron does. Tied embeddings
keep a copy on the first and the last stage (pipeline_tied.py). The flow-matching head is split:
its timestep embedding feeds the first stage's inputs, its velocity MLP reads the last stage's
hidden state. Schedules: pipeline_schedules.py. Under context parallelism each stage runs its
blocks on this cp rank's tokens: the stages after the first enter the sequence layout the first
stage cut (context_parallel.py), and the hidden state sent between stages is that rank's share.

Late fusion: the first stage encodes the media (its encoders and projectors are input side)
and sends the media entries [B, M, d] along with the hidden state to every later stage that
reads them (a stage with cross-attention layers, or the last one when the contrastive loss pools
them) or passes them on; each cross-attention layer lives on the stage of the block it precedes.
The media's gradient comes back the same way, summed over the stages that read it, into the
encoders. The media masks are rebuilt from the micro-batch on each stage.

Multi-token prediction (runtime/mtp.py): its modules sit on the last stage, after the final
decoder block, as Megatron-Core places them. They read the input embedding of the whole
sequence, which the first stage computes: it travels with the hidden state (after the media)
through every stage to the last, and its gradient comes back the same way into the embedding
(Megatron-Core keeps a copy of the embedding on the last stage instead and reduces its gradient
between the two, as for tied embeddings). The last stage returns the logits of each depth after
(logits, hidden).
"""

from __future__ import annotations

from typing import Callable, ContextManager

import torch
import torch.nn as nn

from vlac.spec import Experiment

from ..optim import check_trainable
from ..mtp import mtp_blocks, predict_ahead
from .mesh import Mesh
from .pipeline_loss import PipelineLoss
from .pipeline_schedules import check_schedule, make_schedule
from .pipeline_tied import TiedEmbeddings, is_tied
from .stats import StepStats

INPUT_SIDE = ("embed", "pos_embed", "projectors", "video")
OUTPUT_SIDE = ("norm", "head", "contrastive", "mtp")
# modules used on both ends: their children split between the first and the last stage
SPLIT = {"flow": (("fourier", "time_embed"), ("velocity",))}


class SparseLayers(nn.ModuleDict):
    """Some blocks of a ModuleList under their original indices (so `layers.7.attn.wq.weight`
    keeps its name); iterates over the blocks, as the ModuleList it replaces."""

    def __iter__(self):
        return iter(self._modules.values())


def check_pipelinable(exp: Experiment, model: nn.Module) -> None:
    problems = []
    known = set(INPUT_SIDE + OUTPUT_SIDE + tuple(SPLIT) + ("layers", "cross_layers"))
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
        elif name == "cross_layers":  # each before its block, on that block's stage
            child = nn.ModuleDict({str(i): child[str(i)] for i in layer_ids if str(i) in child})
        elif name in SPLIT:
            front, back = SPLIT[name]
            child = _part_of(child, (front if first else ()) + (back if last else ()))
        elif not keep:
            child = None
        setattr(view, name, child)
    return view


def _part_of(module: nn.Module, children: tuple[str, ...]) -> nn.Module | None:
    """An instance of type(module) holding only `children` (shared, under their names)."""
    if not children:
        return None
    part = object.__new__(type(module))
    nn.Module.__init__(part)
    for name, child in module.named_children():
        setattr(part, name, child if name in children else None)
    return part


class _AttachAux(torch.autograd.Function):
    """Returns `y` unchanged; in backward also gives `aux` the gradient `weight`."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, aux: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        ctx.aux_meta = (aux.shape, aux.dtype, aux.device)
        # not `y` itself: autograd would make that a view of the input, and the zero-bubble
        # schedule detaches stage outputs in place (detach shares the storage, copies nothing)
        return y.detach()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        shape, dtype, device = ctx.aux_meta
        return grad, torch.full(shape, ctx.weight, dtype=dtype, device=device), None


class _PassOn(torch.autograd.Function):
    """Returns `t` as a new output (its gradient passes straight back), so a stage can send on an
    input it received; not `t` itself, for the reason _AttachAux gives."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        return t.detach()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad


class StageModule(nn.Module):
    """What a PipelineStage runs: hidden state (or nothing, on the first stage) and the
    micro-batch fields in; hidden state out, or (logits, hidden) from the last stage. Keeps the
    MoE diagnostics of each call in `records`. Late fusion: `reads_media` (cross-attention layers
    here, or the last stage's pooled media), `sends_media` (a later stage reads them): the media
    entries come in after the hidden state and go out after it."""

    def __init__(self, view: nn.Module, first: bool, last: bool, moe_rows: list[int],
                 forward_context: Callable[[], ContextManager], reads_media: bool = False,
                 sends_media: bool = False, mtp: bool = False):
        super().__init__()
        self.view = view
        self.first, self.last = first, last
        self.reads_media, self.sends_media = reads_media, sends_media
        self.mtp = mtp  # the model has MTP modules: the input embedding travels to the last stage
        self.moe_rows = moe_rows
        self.forward_context = forward_context
        self.aux_weight = 1.0
        self.records: list[dict[str, torch.Tensor]] = []

    def forward(self, *received: torch.Tensor, **batch: torch.Tensor):
        # from the stage before: hidden state, media (when this stage reads or passes them on), input embedding (MTP)
        received = list(received)
        hidden = None if self.first else received.pop(0)
        media = received.pop(0) if not self.first and (self.reads_media or self.sends_media) else None
        embedded = received.pop(0) if not self.first and self.mtp else None
        m = self.view
        shard = getattr(m, "context_shard", None)
        if shard is not None and not self.first:  # the hidden state is this cp rank's tokens already
            shard.enter(batch["tokens"].size(1), hidden.device)
        with self.forward_context():
            x = m.embed_inputs(batch) if self.first else hidden
            if self.first and self.mtp:
                embedded = x
            media_mask = None
            if self.first and (self.reads_media or self.sends_media):
                media, media_mask, _ = m.encode_media(batch)
            elif self.reads_media:
                media_mask = torch.cat(list(m.media_masks(batch).values()), 1)
            mask = m.attention_mask(batch)
            positions = m.token_positions(batch)  # packed rows: per document, rebuilt per stage as the mask is
            stream = m.second_stream[batch["modality"]] if getattr(m, "dual", False) else None
            aux = x.new_zeros((), dtype=torch.float32)
            loads, drops, entropy = [], [], []
            for key, block in m.layers.items():
                if self.reads_media and key in m.cross_layers:
                    x = m.cross_layers[key](x, media, media_mask)
                x, a, load, dropped = block(x, mask, stream, positions)
                if a is not None:
                    aux = aux + a
                    loads.append(load)
                    drops.append(dropped)
                    entropy.append(block.mlp.router_entropy.detach().clone())
            if self.last:
                ahead = []
                if self.mtp:  # the MTP modules on the decoder's output before its final norm
                    ahead, moe = predict_ahead(m.mtp, m.head, x, embedded, mask, stream, positions)
                    for a, load, dropped, ent in moe:
                        aux = aux + a
                        loads.append(load)
                        drops.append(dropped)
                        entropy.append(ent.detach().clone())
                h = m.norm(x)
                x = (m.head(h), h, *ahead)
        if loads:
            self.records.append({"aux_loss": aux.detach(), "expert_load": torch.stack(loads).detach(),
                                 "dropped_fraction": torch.stack(drops).detach(), "router_entropy": torch.stack(entropy)})
        if aux.requires_grad:
            x = (_AttachAux.apply(x[0], aux, self.aux_weight), *x[1:]) if self.last else _AttachAux.apply(x, aux, self.aux_weight)
        if self.last:
            return (*x, media) if self.reads_media else x  # the loss pools the media (pipeline_loss.py)
        out = [x]
        if self.sends_media:
            out.append(_PassOn.apply(media) if media.requires_grad else media)
        if self.mtp:
            out.append(_PassOn.apply(embedded) if embedded.requires_grad else embedded)
        return tuple(out) if len(out) > 1 else x


def media_readers(exp: Experiment, model: nn.Module, per_stage: list[list[int]]) -> list[bool]:
    """Late fusion: whether each stage reads the media entries (holds a cross-attention layer, or
    is the last stage and the contrastive loss pools them)."""
    cross = getattr(model, "cross_layers", None)
    if cross is None:
        return [False] * len(per_stage)
    reads = [any(str(i) in cross for i in ids) for ids in per_stage]
    reads[-1] = reads[-1] or bool(exp.losses.contrastive)
    return reads


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
                 n_moe: int, n_experts: int, device: torch.device, tied: TiedEmbeddings | None = None):
        self.exp, self.schedule, self.stages, self.loss = exp, schedule, stages, loss
        self.dp, self.n_moe, self.n_experts, self.device = dp, n_moe, n_experts, device
        self.tied = tied

    @property
    def mirrored_params(self) -> list[nn.Parameter]:
        """Parameters another pipeline rank also holds (count them once in the gradient norm)."""
        return self.tied.mirrored() if self.tied is not None else []

    def forward_backward(self, batches: list[dict[str, torch.Tensor]]) -> StepStats:
        return self._run(batches, backward=True)

    def forward(self, batches: list[dict[str, torch.Tensor]]) -> StepStats:
        """The same losses as `forward_backward` from the schedule's forward-only pass (`eval`:
        each stage's forward chain and the loss, no backward actions); call under torch.no_grad."""
        return self._run(batches, backward=False)

    def _run(self, batches: list[dict[str, torch.Tensor]], backward: bool) -> StepStats:
        m = len(batches)
        for st in self.stages:
            st.aux_weight, st.records = 1.0 / m, []
        inputs = self.loss.prepare(batches, self.dp)
        fields = {k: torch.cat([b[k] for b in inputs]) for k in inputs[0] if inputs[0][k].dim() > 0}
        # the loss looks each micro-batch up by its index (pipeline_loss.py)
        target = torch.cat([torch.full((b["tokens"].size(0),), i, device=self.device) for i, b in enumerate(batches)])
        run = self.schedule.step if backward else self.schedule.eval
        run(target=target, return_outputs=False, **fields)
        if backward and self.tied is not None:
            self.tied.sync_grads()
        # the first step also runs each stage (and the loss) once on placeholder tensors to infer
        # the shapes sent between stages: only the last m calls are the micro-batches
        stats = StepStats(len(self.exp.modalities), self.n_moe, self.n_experts, self.device,
                          self.exp.losses.mtp.depth if self.exp.losses.mtp else 0)
        weight = 1.0 / (m * self.dp)
        for record in self.loss.records[-m:]:
            stats.add_loss(record, weight)
        for st in self.stages:
            for record in st.records[-m:]:
                stats.add_moe(record, st.moe_rows, weight)
                stats.aux += record["aux_loss"].float() * weight
        return stats


def build_pipeline(exp: Experiment, model: nn.Module, plan: dict, mesh: Mesh, moe_rows_of: dict[int, int],
                   n_experts: int, forward_context, device: torch.device, shard,
                   recompute=None) -> tuple[PipelineRunner, nn.Module]:
    """Stages of this rank, their schedule, and the view that holds all of this rank's parameters
    (for the optimiser and checkpoints). `recompute(stage_module)` applies activation recompute to
    the blocks of one stage, `shard(stage_module, blocks)` then data parallelism."""
    from torch.distributed.pipelining import PipelineStage

    check_pipelinable(exp, model)
    check_trainable(model, exp)  # a rank may hold only frozen stages; the whole model may not
    p = plan["plan"]
    pp, v = p["pp"], p["virtual_stages"]
    check_schedule(p["schedule"], pp, v, p["num_microbatches"], p["dp"], p["zero"])  # before any collective
    tied = is_tied(model)  # before data parallelism replaces the parameters
    n_stages = pp * v
    per_stage = split_layers(p["stage_split"], len(model.layers), n_stages)
    mine = stage_ids(mesh.pp_rank, pp, v)
    reads = media_readers(exp, model, per_stage)
    first_view = last_view = None
    stages, modules, held = [], [], []
    for s in mine:
        first, last = s == 0, s == n_stages - 1
        view = model_view(model, per_stage[s], first, last)
        first_view = view if first else first_view
        last_view = view if last else last_view
        mtp = list(model.mtp) if getattr(model, "mtp", None) is not None else []
        ids = per_stage[s] + ([key for key, _ in mtp_blocks(model)] if last else [])  # MTP blocks: after the decoder's
        rows = [moe_rows_of[i] for i in ids if i in moe_rows_of]
        module = StageModule(view, first, last, rows, forward_context, reads[s], any(reads[s + 1:]), bool(mtp))
        if recompute is not None:
            recompute(module)
        shard(module, [model.layers[i] for i in per_stage[s]] + (mtp if last else []))
        modules.append(module)
        held += per_stage[s]
        stages.append(PipelineStage(module, s, n_stages, device, group=mesh.group("pp")))
    loss = PipelineLoss(exp, last_view, device)
    schedule = make_schedule(p["schedule"], stages, pp, p["num_microbatches"], loss, p["dp"], p["zero"])
    tied = TiedEmbeddings(mesh, first_view, last_view) if tied else None
    holder = model_view(model, sorted(held), first=0 in mine, last=n_stages - 1 in mine)
    holder.pipeline_part = True  # build_optimizer: this rank's stages may hold no trainable parameter
    runner = PipelineRunner(exp, schedule, modules, loss, p["dp"], len(moe_rows_of), n_experts, device, tied)
    return runner, holder
