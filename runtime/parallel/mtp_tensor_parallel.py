"""Tensor and sequence parallelism of the multi-token prediction modules (runtime/mtp.py).

Each module's decoder block takes the decoder blocks' plan (train.py's TP_PLAN included). Without
sequence parallelism the rest of the module (the two input norms, the projection M_k and the norm
before the head) runs whole on every tensor-parallel rank, on the replicated residual stream, as
the model's final norm does. With it the module stays in the sequence-parallel region like a
decoder block: the decoder's output arrives as this rank's sequence shard, the shifted input
embedding (replicated, shifted on the whole sequence) is cut to the same shard, the norms and M_k
act per token on the shard with replicated weights (SequenceParallel: their weight gradients are
summed over the ranks), and the norm before the shared head gathers the sequence again, so the head
and the loss see the whole sequence as they do for the decoder.
"""

from __future__ import annotations

import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import SequenceParallel, parallelize_module

from .moe_local_routing import route_locally, routes_locally
from .tensor_parallel import SEQ, _is_moe, _Relayout, block_plan


def parallelize_mtp(module: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool, expert_tp: bool,
                    replicate: frozenset[str]) -> None:
    """Split one MTPModule over `tp_mesh` in place (see the module docstring)."""
    if sequence_parallel:
        # the replicated embedding to this rank's sequence shard, before its norm reads it as one
        parallelize_module(module, tp_mesh, {"embed_norm": _Relayout(input=(Replicate(), Shard(SEQ)), local_input=True)})
        parallelize_module(module, tp_mesh, {"embed_norm": SequenceParallel(), "hidden_norm": SequenceParallel(),
                                             "proj": SequenceParallel(use_local_output=True), "norm": SequenceParallel()})
    block = module.block
    parallelize_module(block, tp_mesh, block_plan(block, sequence_parallel, expert_tp, replicate))
    if _is_moe(block.mlp) and routes_locally(block.mlp, sequence_parallel, expert_tp):
        route_locally(block.mlp, tp_mesh.get_group())
    if sequence_parallel:  # the whole sequence for the shared head
        parallelize_module(module, tp_mesh, {"norm": _Relayout(output=(Shard(SEQ), Replicate()))})
