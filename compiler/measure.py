"""Measuring the real model on CPU, to check the lowered graph's figures against what the
runtime does: parameters of the module, FLOPs with torch.utils.flop_counter.FlopCounterMode,
and the bytes kept alive for backward under each recompute policy.

FLOPs. CPU fused attention kernels are invisible to FlopCounterMode, so the measurement forces
the MATH backend, which runs attention as counted matmuls: densely (a causal mask is applied
after QK^T) with a 2x backward. The graph counts what a fused FlashAttention kernel does: causal
attention as half of the dense product (a sliding window or a chunk as its pairs), and a 2.5x
backward (it recomputes QK^T). So the
comparison converts the graph's attention records to the math convention (`math_backend_flops`)
instead of loosening the tolerance; every other node is compared as predicted.

Saved bytes. Two measurements on one CPU forward in training mode (default SDPA backend, which
is the fused CPU FlashAttention kernel):
- `hooks`: distinct storages packed by torch.autograd.graph.saved_tensors_hooks, parameters and
  the batch excluded. Checkpointed regions pack their tensors with torch.utils.checkpoint's own
  (innermost) hooks, which keep a placeholder instead of the tensor, so this counts exactly what
  autograd saves only under `none`;
- `live`: every storage an op produced during the forward (a TorchDispatchMode records them)
  that is still referenced after the forward, when the caller holds nothing but the loss: what
  the autograd graph, checkpoint's saved inputs and selective checkpointing's cache keep alive.
  This is the measurement for every policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from vlac.runtime.batch import example_batch
from vlac.runtime.losses import Objective
from vlac.runtime.model import build_model
from vlac.runtime.recompute import apply_recompute
from vlac.spec import Experiment

from .annotate import FLASH_BWD_FACTOR
from .graph import Graph, NodeCost
from .node_costs import storage_key

MATH_BWD_FACTOR = 2.0  # the math path's backward: two GEMMs per forward GEMM


def cpu_objective(exp: Experiment, policy: str = "none", seed: int = 0) -> Objective:
    """The runtime's model and objective on CPU in fp32 and training mode, `policy` applied."""
    model = build_model(exp, "cpu", seed=seed)
    objective = Objective(model, exp).train()
    apply_recompute(objective, policy)
    return objective


def cpu_batch(exp: Experiment, micro_batch: int, seq_len: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """The batch contract's shapes with random tokens and targets (so routing spreads tokens
    over experts as in training); everything else as `example_batch` makes it."""
    batch = example_batch(exp, micro_batch, seq_len, device="cpu", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    size = exp.vocab_layout().size
    for key in ("tokens", "targets"):
        batch[key] = torch.randint(0, size, batch[key].shape, generator=gen)
    return batch


def measured_params(exp: Experiment, device: str = "cpu") -> int:
    """Parameters of the module the runtime builds (distinct tensors: tied weights count once)."""
    return sum(p.numel() for p in build_model(exp, device).parameters())


def _grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """torch._grouped_mm, which FlopCounterMode does not count: [M,K] x [E,K,N] (rows grouped
    by expert) and, in its backward, [K,M] x [M,N] grouped along M into [E,K,N]."""
    if len(a_shape) == 2 and len(b_shape) == 3:
        return 2 * a_shape[0] * a_shape[1] * b_shape[2]
    if len(a_shape) == 2 and len(b_shape) == 2:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    raise ValueError(f"_grouped_mm shapes {a_shape} x {b_shape} are not counted; add them to _grouped_mm_flops")


def measured_flops(exp: Experiment, micro_batch: int = 1, seq_len: int | None = None, policy: str = "none") -> float:
    """FlopCounterMode's total for one forward + backward on CPU, SDPA forced to the MATH backend
    (grouped GEMMs of dropless experts counted too)."""
    objective = cpu_objective(exp, policy)
    batch = cpu_batch(exp, micro_batch, seq_len)
    custom = {torch.ops.aten._grouped_mm: _grouped_mm_flops} if hasattr(torch.ops.aten, "_grouped_mm") else {}
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False, custom_mapping=custom) as counter:
        objective(batch)["loss"].backward()
    return float(counter.get_total_flops())


def math_backend_flops(node: NodeCost, policy: str = "none") -> float:
    """What FlopCounterMode counts for `node` with SDPA on the MATH backend (see the module
    docstring): the graph's figure, with attention converted from the fused convention."""
    if node.kind != "attention":
        return node.flops_fwd + node.flops_bwd + node.flops_overcompute + node.flops_recompute(policy)
    dense_fwd = node.flops_fwd / node.score_fraction  # causal halves, sliding windows: their pairs
    bwd = dense_fwd * MATH_BWD_FACTOR if node.flops_bwd else 0.0
    recompute = dense_fwd if node.flops_recompute(policy) else 0.0
    return dense_fwd + bwd + recompute


def predicted_math_flops(g: Graph, policy: str = "none") -> float:
    return sum(math_backend_flops(n, policy) for n in g.nodes)


def flash_minus_math(g: Graph) -> float:
    """How far the graph's fused-attention count is from the math convention (no recompute):
    the causal half it does not compute, and the extra 0.5x of its backward."""
    return sum(n.flops_fwd + n.flops_bwd - math_backend_flops(n) for n in g.nodes if n.kind == "attention")


@dataclass(frozen=True)
class SavedBytes:
    live: float  # storages still referenced after the forward (every policy)
    hooks: float  # storages packed by saved_tensors_hooks (exact for `none` only)


class _OutputStorages(TorchDispatchMode):
    """Holds a reference to the storage of every op output, to ask later who else holds it."""

    def __init__(self):
        super().__init__()
        self.storages: dict[int, torch.UntypedStorage] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.storages.setdefault(storage_key(t), t.untyped_storage())
        return out


def measured_saved_bytes(exp: Experiment, micro_batch: int = 1, seq_len: int | None = None,
                         policy: str = "none", autocast_bf16: bool = False) -> SavedBytes:
    """`autocast_bf16`: run the forward under CPU bf16 autocast with fp32 parameters, the numerics
    the runtime trains with on CUDA (vlac.runtime.precision) -- to compare with a bf16 lowering."""
    objective = cpu_objective(exp, policy)
    batch = cpu_batch(exp, micro_batch, seq_len)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16)
    exclude = {storage_key(t) for t in list(objective.parameters()) + list(objective.buffers()) + list(batch.values())}
    packed: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key not in exclude:
            packed.setdefault(key, t.untyped_storage().nbytes())
        return t

    recorder = _OutputStorages()
    with saved_tensors_hooks(pack, lambda t: t), recorder, autocast:
        out = objective(batch)
    loss = out["loss"]
    del out
    exclude.add(storage_key(loss))
    live = 0
    for key, storage in recorder.storages.items():
        # one reference is the recorder's own; any other is a tensor the graph keeps
        if key not in exclude and torch._C._storage_Use_Count(storage._cdata) > 1:
            live += storage.nbytes()
    recorder.storages.clear()
    del loss
    return SavedBytes(live=float(live), hooks=float(sum(packed.values())))


__all__ = ["FLASH_BWD_FACTOR", "MATH_BWD_FACTOR", "SavedBytes", "cpu_batch", "cpu_objective", "flash_minus_math",
           "math_backend_flops", "measured_flops", "measured_params", "measured_saved_bytes",
           "predicted_math_flops"]
