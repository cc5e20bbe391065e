"""Tensor (Megatron) and sequence parallelism with DTensor `parallelize_module`.

Attention and dense MLPs are split the Megatron way: wq/wk/wv and w1/w3 column-wise (each rank
keeps a slice of the heads / of the inner width; the model reshapes with `view(b, s, -1, d_head)`,
so the local head count follows from the local weight), wo and w2 row-wise. With sequence
parallelism the residual stream between those regions is split along the sequence: norms run on a
sequence shard, the input of attention and of the MLP is all-gathered, and their output projection
reduce-scatters back to the shard (instead of an all-reduce).

The residual stream is replicated until the first decoder block (the embedding all-reduces its
vocabulary-sharded rows; positions, projectors and video embeddings then act on the whole
sequence). After the final norm the hidden state is gathered again, so the loss heads see it
whole, and the output head gathers the vocabulary so that the loss sees full logits. Modules
outside the decoder blocks (projectors, encoders, loss heads) stay replicated.

MoE layers run unsharded on every tensor-parallel rank (router, experts and shared experts
replicated): their input is gathered to the full sequence and their output handed back as this
rank's shard. Capacity is then computed on exactly the tokens a single process would see. Expert
parallelism (runtime/parallel/expert_parallel.py) is how experts are split.
"""

from __future__ import annotations

import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, ParallelStyle, RowwiseParallel, SequenceParallel,
                                               parallelize_module)

SEQ = 1  # the sequence dimension of [batch, seq, hidden] activations
HEADS = 2  # the head dimension of [batch, seq, heads, d_head] (q/k norms)


class _Relayout(ParallelStyle):
    """Re-lay the first positional input and/or the first output of a module between two
    placements on the tensor-parallel mesh. Only the first element is touched, so the module keeps
    its own signature (masks, caches, the MoE's aux outputs pass through untouched)."""

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


def _is_moe(mlp: nn.Module) -> bool:
    return hasattr(mlp, "router") and hasattr(mlp, "experts")


def block_plan(block: nn.Module, sequence_parallel: bool) -> dict[str, ParallelStyle]:
    """The plan of one decoder block, keyed by module name inside the block."""
    sp = sequence_parallel
    plan: dict[str, ParallelStyle] = {
        "attn.wq": ColwiseParallel(), "attn.wk": ColwiseParallel(), "attn.wv": ColwiseParallel(),
        "attn.wo": RowwiseParallel(output_layouts=Shard(SEQ) if sp else Replicate()),
    }
    if not isinstance(block.attn.q_norm, nn.Identity):
        # q/k norms act per head on this rank's heads: their weight gradient is a partial sum
        plan["attn.q_norm"] = SequenceParallel(sequence_dim=HEADS, use_local_output=True)
        plan["attn.k_norm"] = SequenceParallel(sequence_dim=HEADS, use_local_output=True)
    if sp:
        plan["attn_norm"] = SequenceParallel()
        plan["attn"] = _Relayout(input=(Shard(SEQ), Replicate()))
        plan["mlp_norm"] = SequenceParallel()
    mlp = block.mlp
    if _is_moe(mlp):
        if sp:
            plan["mlp"] = _Relayout(input=(Shard(SEQ), Replicate()), local_input=True, output=(Replicate(), Shard(SEQ)))
        return plan
    plan["mlp.w1"] = ColwiseParallel()
    if getattr(mlp, "w3", None) is not None:
        plan["mlp.w3"] = ColwiseParallel()
    plan["mlp.w2"] = RowwiseParallel(output_layouts=Shard(SEQ) if sp else Replicate())
    if sp:
        plan["mlp"] = _Relayout(input=(Shard(SEQ), Replicate()))
    return plan


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool) -> None:
    """Shard `model` (a VLAModel) in place over `tp_mesh`."""
    problems = []
    if model.head.weight is model.embed.weight:
        problems.append("backbone.tied_embeddings (the embedding is split by rows, the head by columns)")
    if getattr(model, "dual", False):
        problems.append("fusion.stream: dual (the second stream's weights are not split)")
    if getattr(model, "cross_layers", None) is not None:
        problems.append("fusion.mode: late (cross-attention layers are not split)")
    if problems:
        raise ValueError("tensor parallelism (plan.tp > 1) does not support " + "; ".join(problems)
                         + ". Re-plan with --pin tp=1")
    sp = sequence_parallel
    top: dict[str, ParallelStyle] = {
        "embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
        "head": ColwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
    }
    if sp:
        top["norm"] = SequenceParallel()
        # the residual stream enters the sequence-parallel region at the first block
        top["layers.0"] = _Relayout(input=(Replicate(), Shard(SEQ)), local_input=True)
    parallelize_module(model, tp_mesh, top)
    if sp:  # the final hidden state, gathered for the head and the loss heads
        parallelize_module(model, tp_mesh, {"norm": _Relayout(output=(Shard(SEQ), Replicate()))})
    for block in model.layers:
        parallelize_module(block, tp_mesh, block_plan(block, sp))
