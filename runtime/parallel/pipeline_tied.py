"""Tied input embedding and output head across pipeline stages (backbone.tied_embeddings).

In one process `head.weight` is `embed.weight`. With pp > 1 the first stage uses it as the
embedding and the last stage as the head, on different ranks. As Megatron-LM does, both ranks
keep a copy (every rank builds the same initialised model, so the copies start equal), and after
the backward pass the copy's gradients are summed over the two ranks: each copy then holds the
gradient of the one tied weight, and since the optimiser sees the same gradient on both, the
copies stay equal step after step. The global gradient norm counts the weight once (the last
stage's copy is left out of it).

Checkpoints keep both names, `embed.weight` from the first stage and `head.weight` from the last,
as one process writes both; optimiser state exists under whichever name the saving layout
optimised (checkpoint.py loads a missing tied name from the other).

Under tensor parallelism both copies are sharded over the vocabulary (tensor_parallel.py), and each
tensor-parallel rank sums its own rows with the other stage's rank of the same tp coordinate.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.tensor import DTensor

from .mesh import Mesh


def is_tied(model: nn.Module) -> bool:
    head = getattr(model, "head", None)
    return head is not None and getattr(head, "weight", None) is model.embed.weight


def _tied_group(mesh: Mesh) -> dist.ProcessGroup | None:
    """The group of this rank's first and last pipeline stage (same dp, cp and tp coordinates).
    Collective: every rank creates every such group."""
    pp = mesh.dims.pp
    if pp == 2:
        return mesh.group("pp")
    ranks = mesh.world.mesh.reshape(pp, -1)  # [pp, every other coordinate]
    mine = None
    me = dist.get_rank()
    for col in range(ranks.size(1)):
        pair = [int(ranks[0, col]), int(ranks[-1, col])]
        group = dist.new_group(pair)
        if me in pair:
            mine = group
    return mine


class TiedEmbeddings:
    """Sums the tied weight's gradient over its first- and last-stage copies."""

    def __init__(self, mesh: Mesh, first_view: nn.Module | None, last_view: nn.Module | None):
        self.group = _tied_group(mesh)
        # the modules, not their weights: data parallelism may still replace the parameters
        self.modules = [m for m in (first_view.embed if first_view is not None else None,
                                    last_view.head if last_view is not None else None) if m is not None]
        self.last_module = last_view.head if last_view is not None else None

    def weights(self) -> list[nn.Parameter]:
        return [m.weight for m in self.modules]

    def mirrored(self) -> list[nn.Parameter]:
        """The copy to leave out of the global gradient norm (the last stage's)."""
        return [self.last_module.weight] if self.last_module is not None and self.group is not None else []

    @torch.no_grad()
    def sync_grads(self) -> None:
        if self.group is None:
            return
        for w in self.weights():
            if not w.requires_grad:  # fusion.freeze_lm
                continue
            grad = w.grad
            if grad is None:
                grad = w.grad = torch.zeros_like(w)
            if isinstance(grad, DTensor) and grad.placements != w.placements:
                # a vocabulary-sharded embedding's backward leaves a replicated gradient (DTensor's
                # embedding rule); the last stage's head gradient is sharded like its weight, so the
                # copies are summed shard by shard (Replicate -> Shard is a local slice)
                grad = w.grad = grad.redistribute(w.device_mesh, w.placements)
            local = grad.to_local() if isinstance(grad, DTensor) else grad
            dist.all_reduce(local, group=self.group)
