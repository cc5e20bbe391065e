"""Tensor (and sequence) parallelism of multi-head latent attention (runtime/mla.py), Megatron-Core's
way: the down path (`latent`: W_dq, W_dkv and their norms) is replicated on every tensor-parallel
rank, the up-projections (`wq_up` or `wq`, `wkv_up`) are split column-wise by heads, and `wo`
row-wise. With sequence parallelism the attention's input is all-gathered to the whole sequence
before the down path, as for standard attention, and `wo` reduce-scatters back to the shard.

Exactness. Each rank holds the whole latents but only its heads, so the gradient reaching a latent
from this rank's heads is a partial sum over the heads. The column-wise up-projections sum theirs
over the tp group in backward (their replicated input's gradient is all-reduced), but the rotated
key k_pe reaches the attention directly, shared by every head: its gradient is all-reduced here
(`_SumGradientOfSharedKey`, Megatron's copy_to_tensor_model_parallel_region). Every gradient that enters the latent module is then the whole one, so
the replicated weights get identical, complete gradients on every rank (no reduction needed), and
the attention's input gradient is whole on every rank, which is what the sequence-parallel gather
(`local_input`: its backward keeps this rank's rows) expects.
"""

from __future__ import annotations

import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import ParallelStyle

from .expert_tensor_parallel import _SumGrad  # identity forward, gradient summed over a group backward
from .tensor_parallel import SEQ, _out, _Relayout, colwise, rowwise


class _SumGradientOfSharedKey(ParallelStyle):
    """On LatentProjections: its third output, the rotated key shared by every head, passes on
    unchanged and gets its gradient summed over the tensor-parallel ranks."""

    def _apply(self, module: nn.Module, mesh: DeviceMesh) -> nn.Module:
        group = mesh.get_group()

        def hook(_, __, out):
            c_q, c_kv, k_pe = out
            return c_q, c_kv, _SumGrad.apply(k_pe, group)
        module.register_forward_hook(hook)
        return module


def latent_attention_plan(root: nn.Module, prefix: str, sp: bool) -> dict[str, ParallelStyle]:
    """The plan of the latent attention at `prefix` in `root` (tensor_parallel.attention_plan's
    for runtime/mla.LatentAttention)."""
    attn = root.get_submodule(prefix)
    plan: dict[str, ParallelStyle] = {f"{prefix}.{w}": colwise(getattr(attn, w)) for w in attn.column_parallel}
    plan[f"{prefix}.wo"] = rowwise(attn.wo, output_layouts=_out(sp))
    plan[f"{prefix}.latent"] = _SumGradientOfSharedKey()
    if sp:  # a plain tensor of the whole sequence: the replicated down path runs on it as is
        plan[prefix] = _Relayout(input=(Shard(SEQ), Replicate()), local_input=True)
    return plan


__all__ = ["latent_attention_plan"]
