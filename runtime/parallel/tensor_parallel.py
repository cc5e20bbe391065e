"""Tensor (Megatron) and sequence parallelism with DTensor `parallelize_module`.

train.py states the split of the decoder layers as TP_PLAN, module name inside a layer -> style
("colwise", "rowwise", "sequence_parallel"), read off the plan below (`default_tp_plan`); an edit
may keep a whole attention or MLP region unsplit ("replicate"), anything else is refused with the
module and its choices named (`replicated_regions`).

Attention and dense MLPs are split the Megatron way: wq/wk/wv and w1/w3 column-wise (each rank
keeps a slice of the heads / of the inner width; the model reshapes with `view(b, s, -1, d_head)`,
so the local head count follows from the local weight), wo and w2 row-wise; attention sink logits
(one per head, runtime/attention_sinks.py) are split with the heads (`HeadShard`). With sequence
parallelism the residual stream between those regions is split along the sequence: norms run on a
sequence shard, the input of attention and of the MLP is all-gathered, and their output projection
reduce-scatters back to the shard (instead of an all-reduce).

The residual stream is replicated until the first decoder block (the embedding all-reduces its
vocabulary-sharded rows; positions, projectors and video embeddings then act on the whole
sequence). After the final norm the hidden state is gathered again, so the loss heads see it
whole, and the output head gathers the vocabulary so that the loss sees full logits. Modules
outside the decoder blocks (projectors, encoders, loss heads) stay replicated.

Tied embeddings: the embedding (row-wise: a slice of the vocabulary rows) and the head (column-
wise: a slice of the output features, i.e. again of the vocabulary rows) shard their common weight
alike, Shard(0), so one DTensor parameter serves both and accumulates both gradients.

Late fusion: each gated cross-attention layer is split like a block (queries from the residual
stream, keys/values from the media, which stay replicated; its MLP as above). Under sequence
parallelism the residual stream enters the sequence-parallel region at the first cross-attention
layer, which runs before block 0, and the scalar tanh gates multiply a sequence shard: their
gradient is a partial sum, added up over the tensor-parallel ranks by a gradient hook.

Dual stream: the second stream's attention and MLP are split like the main ones. Sequence
parallelism is refused: the block selects the stream per token both on the gathered q/k/v (whole
sequence) and on the output projections (a sequence shard) from one `stream` input; lifting it
needs the block to take a second, sequence-sharded selector (a change to model.Block).

Frozen parameters (fusion.freeze_lm) stay frozen: SequenceParallel re-registers norm weights as new
DTensor parameters, so requires_grad is restored afterwards.

FP8: modules converted to torchao `Float8Linear` beforehand (runtime/precision.py) are split with
torchao's Float8 colwise/rowwise styles under NCCL (FP8 all-gathers), with the plain ones on gloo.

MoE layers with a capacity run unsharded on every tensor-parallel rank (router, experts and shared
experts replicated): their input is gathered to the full sequence and their output handed back as
this rank's shard. Capacity is then computed on exactly the tokens a single process would see.
Dropless MoE layers under sequence parallelism route their own shard instead
(runtime/parallel/moe_local_routing.py). With
expert tensor parallelism (etp = tp) the experts are split along their inner width instead
(runtime/parallel/expert_tensor_parallel.py); expert parallelism (expert_parallel.py) splits the
set of experts.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (ColwiseParallel, ParallelStyle, RowwiseParallel, SequenceParallel,
                                               parallelize_module)

from .moe_local_routing import route_locally, routes_locally

SEQ = 1  # the sequence dimension of [batch, seq, hidden] activations
HEADS = 2  # the head dimension of [batch, seq, heads, d_head] (q/k norms)


class _Relayout(ParallelStyle):
    """Re-lay the first positional input and/or the first output of a module between two
    placements on the tensor-parallel mesh. Only the first element is touched, so the module keeps
    its own signature (masks, media, caches, the MoE's aux outputs pass through untouched)."""

    def __init__(self, *, input: tuple | None = None, output: tuple | None = None, local_input: bool = False):
        self.input, self.output, self.local_input = input, output, local_input

    def _apply(self, module: nn.Module, mesh: DeviceMesh) -> nn.Module:
        if self.input is not None:
            module.register_forward_pre_hook(self._relayout_input(mesh, *self.input))
        if self.output is not None:
            module.register_forward_hook(self._relayout_output(mesh, *self.output))
        return module

    def _relayout_input(self, mesh: DeviceMesh, src, dst):
        def pre(_, args):
            x = args[0] if isinstance(args[0], DTensor) else DTensor.from_local(args[0], mesh, (src,), run_check=False)
            x = x.redistribute(mesh, (dst,))
            return (x.to_local() if self.local_input else x, *args[1:])
        return pre

    @staticmethod
    def _relayout_output(mesh: DeviceMesh, src, dst):
        def post(_, __, out):
            first = out[0] if isinstance(out, tuple) else out
            if not isinstance(first, DTensor):
                first = DTensor.from_local(first, mesh, (src,), run_check=False)
            y = first.redistribute(mesh, (dst,)).to_local()
            return (y, *out[1:]) if isinstance(out, tuple) else y
        return post


def _float8_collectives(module: nn.Module) -> bool:
    """Whether `module` is a torchao Float8Linear whose activations and gradients may cross the
    tensor-parallel collectives in FP8 (the Float8 styles cast before the all-gather). NCCL only:
    gloo has no FP8 dtypes. Elsewhere the plain styles split the Float8Linear: its casts then run
    on the DTensors, with the same tensorwise scales (the amax is reduced over the whole DTensor),
    and only the collectives stay in high precision. Checked without importing torchao."""
    f8 = sys.modules.get("torchao.float8.float8_linear")
    if f8 is None or not isinstance(module, f8.Float8Linear):
        return False
    from torchao.float8.config import ScalingGranularity

    # torchao's Float8 styles cast with one scale per tensor (the rowwise recipe keeps the plain ones)
    tensorwise = module.config.cast_config_input.scaling_granularity is ScalingGranularity.TENSORWISE
    return tensorwise and dist.is_initialized() and "nccl" in str(dist.get_backend())


class HeadShard(ParallelStyle):
    """A module whose parameters are per-head vectors returned by its forward (the attention sink
    logits, runtime/attention_sinks.py): each parameter split along its heads, Shard(0), like the
    column-wise q projection, and the output handed on as this rank's slice. The gradient of the
    slice is the whole gradient of those heads: the attention runs on the whole sequence."""

    def _apply(self, module: nn.Module, mesh: DeviceMesh) -> nn.Module:
        def split(_, mod, device_mesh):
            for name, p in list(mod.named_parameters(recurse=False)):
                mod.register_parameter(name, nn.Parameter(distribute_tensor(p, device_mesh, [Shard(0)]),
                                                          requires_grad=p.requires_grad))

        def local(_, out, __):
            return out.to_local() if isinstance(out, DTensor) else out

        return distribute_module(module, mesh, split, output_fn=local)


def colwise(module: nn.Module, **kw) -> ParallelStyle:
    if _float8_collectives(module):
        from torchao.float8.float8_tensor_parallel import Float8ColwiseParallel
        return Float8ColwiseParallel(**kw)
    return ColwiseParallel(**kw)


def rowwise(module: nn.Module, **kw) -> ParallelStyle:
    if _float8_collectives(module):
        from torchao.float8.float8_tensor_parallel import Float8RowwiseParallel
        return Float8RowwiseParallel(**kw)
    return RowwiseParallel(**kw)


def _is_moe(mlp: nn.Module) -> bool:
    return hasattr(mlp, "router") and hasattr(mlp, "experts")


def _out(sp: bool):
    """Where a row-wise projection leaves the residual stream: a sequence shard under SP."""
    return Shard(SEQ) if sp else Replicate()


def attention_plan(root: nn.Module, prefix: str, sp: bool, gather_input: bool = True) -> dict[str, ParallelStyle]:
    """Heads split over tp: q/k/v column-wise, the output projection row-wise. With SP the module's
    first input (the normed residual stream) is gathered, unless `gather_input` is False (the
    caller hands the projections a gathered input itself)."""
    attn = root.get_submodule(prefix)
    if hasattr(attn, "latent"):  # multi-head latent attention (runtime/mla.py): its down path stays replicated
        from .latent_attention_tp import latent_attention_plan  # (it imports this module's styles)
        return latent_attention_plan(root, prefix, sp)
    plan: dict[str, ParallelStyle] = {f"{prefix}.{w}": colwise(getattr(attn, w)) for w in ("wq", "wk", "wv")}
    plan[f"{prefix}.wo"] = rowwise(attn.wo, output_layouts=_out(sp))
    if getattr(attn, "sinks", None) is not None:  # one logit per head: this rank's heads' (attention_sinks.py)
        plan[f"{prefix}.sinks"] = HeadShard()
    if not isinstance(getattr(attn, "q_norm", nn.Identity()), nn.Identity):
        # q/k norms act per head on this rank's heads: their weight gradient is a partial sum
        plan[f"{prefix}.q_norm"] = SequenceParallel(sequence_dim=HEADS, use_local_output=True)
        plan[f"{prefix}.k_norm"] = SequenceParallel(sequence_dim=HEADS, use_local_output=True)
    if sp and gather_input:
        plan[prefix] = _Relayout(input=(Shard(SEQ), Replicate()))
    return plan


def mlp_plan(root: nn.Module, prefix: str, sp: bool) -> dict[str, ParallelStyle]:
    """Inner width split over tp: w1/w3 column-wise, w2 row-wise."""
    mlp = root.get_submodule(prefix)
    plan: dict[str, ParallelStyle] = {f"{prefix}.w1": colwise(mlp.w1)}
    if getattr(mlp, "w3", None) is not None:
        plan[f"{prefix}.w3"] = colwise(mlp.w3)
    plan[f"{prefix}.w2"] = rowwise(mlp.w2, output_layouts=_out(sp))
    if sp:
        plan[prefix] = _Relayout(input=(Shard(SEQ), Replicate()))
    return plan


def block_plan(block: nn.Module, sequence_parallel: bool, expert_tp: bool = False,
               replicate: frozenset[str] = frozenset()) -> dict[str, ParallelStyle]:
    """The plan of one decoder block, keyed by module name inside the block. `replicate`: regions
    (REPLICABLE) that stay whole on every tensor-parallel rank instead (train.py's TP_PLAN)."""
    plan = _megatron_block_plan(block, sequence_parallel, expert_tp)
    for region in replicate:
        if not any(k.startswith(region + ".") for k in plan):
            continue  # this block has no such region (e.g. an MoE layer's mlp)
        plan = {k: v for k, v in plan.items() if k != region and not k.startswith(region + ".")}
        if sequence_parallel:  # the whole sequence in, this rank's shard out (as an MoE layer does)
            plan[region] = _Relayout(input=(Shard(SEQ), Replicate()), local_input=True, output=(Replicate(), Shard(SEQ)))
    return plan


def _megatron_block_plan(block: nn.Module, sequence_parallel: bool, expert_tp: bool) -> dict[str, ParallelStyle]:
    sp = sequence_parallel
    plan = attention_plan(block, "attn", sp)
    if sp:
        plan["attn_norm"] = SequenceParallel()
        plan["mlp_norm"] = SequenceParallel()
    if getattr(block, "media", None) is not None:  # dual stream (refused with SP by apply_tensor_parallel)
        plan.update(attention_plan(block, "media.attn", sp))
        plan.update(mlp_plan(block, "media.mlp", sp))
    if not _is_moe(block.mlp):
        plan.update(mlp_plan(block, "mlp", sp))
    elif expert_tp:
        from .expert_tensor_parallel import moe_plan  # (it imports this module's styles)
        plan.update(moe_plan(block, "mlp", sp))
    elif routes_locally(block.mlp, sp, expert_tp):  # dropless: this rank's sequence shard in and out
        plan["mlp"] = _Relayout(input=(Shard(SEQ), Shard(SEQ)), local_input=True)
    elif sp:
        plan["mlp"] = _Relayout(input=(Shard(SEQ), Replicate()), local_input=True, output=(Replicate(), Shard(SEQ)))
    return plan


def cross_layer_plan(layer: nn.Module, sequence_parallel: bool) -> dict[str, ParallelStyle]:
    """A gated cross-attention layer (late fusion): x attends to the replicated media. wk/wv take
    the media as a replicated input; their column-wise split all-reduces the media's gradient in
    backward, so the media encoders see the whole gradient on every rank."""
    sp = sequence_parallel
    plan = {**attention_plan(layer, "attn", sp), **mlp_plan(layer, "mlp", sp)}
    if sp:
        plan["attn_norm"] = SequenceParallel()
        plan["mlp_norm"] = SequenceParallel()
    return plan


# ---- the plan as train.py states it: module inside a decoder layer -> style name ----------------

REPLICABLE = ("attn", "mlp", "media.attn", "media.mlp")  # Megatron regions TP_PLAN may keep whole ("replicate")


def style_name(style: ParallelStyle) -> str | None:
    """The name TP_PLAN gives a style; None for the re-layout glue between regions (implied by
    the styles and by SEQUENCE_PARALLEL) and for the expert-tensor-parallel styles (set by EXPERTS)."""
    for cls, name in ((ColwiseParallel, "colwise"), (RowwiseParallel, "rowwise"), (SequenceParallel, "sequence_parallel")):
        if isinstance(style, cls):
            return name
    return None


def default_tp_plan(model: nn.Module, sequence_parallel: bool, expert_tp: bool = False) -> dict[str, str]:
    """The split of every decoder layer's modules, by name inside a layer (the union over the
    layers: a dense and an MoE layer contribute their own modules)."""
    out: dict[str, str] = {}
    for block in model.layers:
        for name, style in _megatron_block_plan(block, sequence_parallel, expert_tp).items():
            if style_name(style) is not None:
                out.setdefault(name, style_name(style))
    return out


def _region(name: str) -> str | None:
    region = name.rsplit(".", 1)[0] if "." in name else None
    return region if region in REPLICABLE else None


def replicated_regions(tp_plan: dict[str, str], default: dict[str, str]) -> frozenset[str]:
    """The regions `tp_plan` keeps whole, after checking it against the default plan: the same
    modules, each either its default style or (every module of an attention or MLP region
    together) "replicate". Errors name the module and the valid choices."""
    where = "train.py TP_PLAN"
    unknown = sorted(set(tp_plan) - set(default))
    if unknown:
        raise ValueError(f"{where}: no module {unknown[0]!r} in the decoder layers of this model; the modules split over "
                         f"tp are: {', '.join(default)}")
    missing = [k for k in default if k not in tp_plan]
    if missing:
        raise ValueError(f"{where}: module {missing[0]!r} is missing; give it {default[missing[0]]!r}"
                         + (" or 'replicate'" if _region(missing[0]) else ""))
    regions: dict[str, set[bool]] = {}
    for name, want in default.items():
        got, region = tp_plan[name], _region(name)
        choices = [want, "replicate"] if region else [want]
        if got not in choices:
            why = (f"(Megatron: column-wise into, row-wise out of the {region}; 'replicate' keeps the whole {region} unsplit)"
                   if region else "(it follows SEQUENCE_PARALLEL and the modules around it)")
            raise ValueError(f"{where}[{name!r}]: {got!r} is not valid; choices: {', '.join(map(repr, choices))} {why}")
        if region:
            regions.setdefault(region, set()).add(got == "replicate")
    mixed = sorted(r for r, kinds in regions.items() if len(kinds) > 1)
    if mixed:
        names = [k for k in default if _region(k) == mixed[0]]
        raise ValueError(f"{where}: the modules of {mixed[0]!r} ({', '.join(names)}) are split together: give all of them "
                         f"their default styles, or all 'replicate'")
    return frozenset(r for r, kinds in regions.items() if True in kinds)


class _SumGradOver:
    """Gradient hook: sum a parameter's gradient over a process group (a replicated parameter
    applied to a sequence shard gets a partial gradient on each rank)."""

    def __init__(self, group: dist.ProcessGroup):
        self.group = group

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, group=self.group)
        return grad


def refusals(model: nn.Module, sequence_parallel: bool) -> list[str]:
    """What of `model` this runtime cannot split over tp, each naming the spec or plan field."""
    problems = []
    if getattr(model, "dual", False) and sequence_parallel:
        problems.append("fusion.stream: dual with plan.sequence_parallel (the per-token stream selector acts on the "
                        "gathered q/k/v and on the sequence-sharded outputs alike); re-plan with "
                        "--pin sequence_parallel=false")
    return problems


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool,
                          expert_tp: bool = False, tp_plan: dict[str, str] | None = None) -> None:
    """Shard `model` (a VLAModel) in place over `tp_mesh`. `expert_tp`: split the experts of MoE
    layers over tp too (plan.expert_tensor_parallel = tp). `tp_plan`: train.py's TP_PLAN (the
    default plan when None)."""
    sp = sequence_parallel
    problems = refusals(model, sp)
    if problems:
        raise ValueError("tensor parallelism (plan.tp > 1) does not support " + "; ".join(problems))
    replicate = (replicated_regions(tp_plan, default_tp_plan(model, sp, expert_tp)) if tp_plan is not None
                 else frozenset())
    tied = model.head.weight is model.embed.weight
    # SequenceParallel re-registers norm weights as trainable DTensors: a frozen part (fusion.freeze_lm) must stay so
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    cross = getattr(model, "cross_layers", None)
    top: dict[str, ParallelStyle] = {
        "embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
        "head": colwise(model.head, input_layouts=Replicate(), output_layouts=Replicate()),
    }
    if sp:
        top["norm"] = SequenceParallel()
        # the residual stream enters the sequence-parallel region at the first layer that runs:
        # the cross-attention layer before block 0 under late fusion (when there are media)
        entry = "cross_layers.0" if cross is not None and "0" in cross and model.media_names else "layers.0"
        top[entry] = _Relayout(input=(Replicate(), Shard(SEQ)), local_input=True)
    parallelize_module(model, tp_mesh, top)
    if tied:  # both are Shard(0) over the vocabulary: one parameter again
        model.head.weight = model.embed.weight
    if sp:  # the final hidden state, gathered for the head and the loss heads
        parallelize_module(model, tp_mesh, {"norm": _Relayout(output=(Shard(SEQ), Replicate()))})
    for block in model.layers:
        parallelize_module(block, tp_mesh, block_plan(block, sp, expert_tp, replicate))
        if _is_moe(block.mlp) and routes_locally(block.mlp, sp, expert_tp):
            route_locally(block.mlp, tp_mesh.get_group())
    if getattr(model, "mtp", None) is not None:  # multi-token prediction: its blocks take the same plan
        from .mtp_tensor_parallel import parallelize_mtp
        for module in model.mtp:
            parallelize_mtp(module, tp_mesh, sp, expert_tp, replicate)
    for layer in (cross.values() if cross is not None else ()):
        parallelize_module(layer, tp_mesh, cross_layer_plan(layer, sp))
        if sp and getattr(layer, "gated", False):
            for gate in (layer.attn_gate, layer.mlp_gate):
                if gate.requires_grad:
                    gate.register_hook(_SumGradOver(tp_mesh.get_group()))
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
