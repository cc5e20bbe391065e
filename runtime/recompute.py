"""Activation recompute (checkpointing) of the model's repeated blocks, applied from outside.

The compiler costs exactly these policies, so their definitions live here, next to the code
that implements them:

* ``none``: autograd keeps whatever each op saves for backward.
* ``selective``: inside each block, keep the outputs of the GEMMs (``mm``/``addmm``/``bmm``/
  ``_grouped_mm``, the router's included) and of the fused attention kernels (output and log-sum-exp); norms,
  activations, RoPE, masks and the other elementwise ops are recomputed from those in the
  backward pass. The block's inputs are kept too.
* ``full``: keep only each block's inputs; the whole block runs again in the backward pass.

With ``layers=k`` only the first k blocks (in registration order) are checkpointed and the rest
keep what autograd saves; ``recompute_blocks`` checkpoints a given subset. A pipeline rank's
plan (full recompute of k of its blocks, Megatron-Core's ``--recompute-method block
--recompute-num-layers``, which the compiler costs for stacks with ``partial_recompute``) names
the decoder layers (vlac.compiler.recompute_choice.full_recompute_layers), and
vlac.runtime.parallel.activation_checkpoint applies it to the rank's own stages.

A *block* is a module held in an ``nn.ModuleList`` (a decoder layer, or any other repeated
layer), the outermost such module on its path. Everything outside blocks (embeddings, output
head, loss) always keeps what autograd saves.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator

import torch
import torch.nn as nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

RECOMPUTE_POLICIES = ("none", "selective", "full")

# Modules whose cost is a single op: never blocks, even inside a ModuleList.
_SINGLE_OP_TYPES = (nn.Linear, nn.Embedding, nn.LayerNorm, nn.Dropout, nn.GELU, nn.SiLU, nn.Identity)

_aten = torch.ops.aten
# ops whose outputs `selective` keeps; resolved lazily where an overload may not exist in a build
_SAVED_OP_NAMES = ("mm", "addmm", "bmm", "baddbmm", "_grouped_mm",
                   "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
                   "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                   "_scaled_dot_product_fused_attention_overrideable")


def iter_blocks(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, module) of every block: the outermost non-single-op modules held in an
    nn.ModuleList, in registration order."""
    def walk(module: nn.Module, prefix: str, in_list: bool):
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if in_list and not isinstance(child, (nn.ModuleList, *_SINGLE_OP_TYPES)):
                yield path, child
                continue  # outermost only: a block's own lists belong to the block
            yield from walk(child, path + ".", isinstance(child, nn.ModuleList))
    yield from walk(model, "", False)


def saved_ops() -> frozenset:
    """The aten overloads whose outputs the selective policy keeps."""
    ops = set()
    for name in _SAVED_OP_NAMES:
        packet = getattr(_aten, name, None)
        if packet is not None:
            ops.add(packet.default)
    return frozenset(ops)


def _selective_policy(saved: frozenset) -> Callable:
    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in saved else CheckpointPolicy.PREFER_RECOMPUTE
    return policy


def _draws_random_numbers(module: nn.Module) -> bool:
    """Dropout anywhere in the block: nn.Dropout modules, or a float `dropout` attribute (the
    probability attention modules hand to SDPA)."""
    for m in module.modules():
        p = m.p if isinstance(m, nn.Dropout) else getattr(m, "dropout", 0.0)
        if isinstance(p, float) and p > 0:
            return True
    return False


def apply_recompute(model: nn.Module, policy: str, layers: int | None = None) -> int:
    """Checkpoint the blocks of `model` under `policy` (see the module docstring): every block,
    or the first `layers` of them; returns the number of blocks wrapped. Applying a policy again
    replaces the previous one; ``none`` restores plain forwards. Parameter names and state dicts
    are unchanged (the block's ``forward`` is wrapped in place)."""
    if policy not in RECOMPUTE_POLICIES:
        raise ValueError(f"recompute policy {policy!r} is unknown; choose one of {', '.join(RECOMPUTE_POLICIES)}")
    if layers is not None and (type(layers) is not int or layers < 0):
        raise ValueError(f"recompute layers {layers!r}: give the number of blocks to checkpoint, an integer >= 0 "
                         "(or None for every block)")
    blocks = [block for _, block in iter_blocks(model)]
    return recompute_blocks(blocks, blocks if layers is None else blocks[:layers], policy)


def recompute_blocks(blocks: list[nn.Module], chosen: list[nn.Module], policy: str) -> int:
    """Every one of `blocks` back to its plain forward, then `policy` on those in `chosen` (a
    pipeline stage's own blocks, vlac.runtime.parallel.activation_checkpoint); returns how many
    were wrapped."""
    if policy not in RECOMPUTE_POLICIES:
        raise ValueError(f"recompute policy {policy!r} is unknown; choose one of {', '.join(RECOMPUTE_POLICIES)}")
    saved = saved_ops()
    picked = {id(b) for b in chosen}
    count = 0
    for block in blocks:
        block.__dict__.pop("forward", None)  # back to the class's forward
        if policy == "none" or id(block) not in picked:
            continue
        count += 1
        # RNG state is only worth saving (~5 KB per block on CPU) when the block draws random numbers
        preserve_rng = _draws_random_numbers(block)
        if policy == "full":
            context_fn = None
        else:
            context_fn = functools.partial(create_selective_checkpoint_contexts, _selective_policy(saved))
        block.forward = _checkpointed(type(block).forward.__get__(block), context_fn, preserve_rng)
    return count


def _checkpointed(forward: Callable, context_fn, preserve_rng: bool) -> Callable:
    kwargs = {"use_reentrant": False, "preserve_rng_state": preserve_rng}
    if context_fn is not None:
        kwargs["context_fn"] = context_fn

    @functools.wraps(forward)
    def run(*args, **kw):
        return checkpoint(forward, *args, **kw, **kwargs)
    return run


__all__ = ["RECOMPUTE_POLICIES", "apply_recompute", "iter_blocks", "recompute_blocks", "saved_ops"]
