"""FP8 expert GEMMs: the grouped (per-expert) matmuls of an MoE layer in FP8, with per-tensor
delayed scaling through vlac's own cast kernels.

The planner marks the expert GEMMs FP8 like the dense ones (in an MoE they are most of the GEMM
FLOPs), but TransformerEngine's `te.Linear` and torchao's `Float8Linear` replace `nn.Linear`
modules only, and the experts are stacked weights [E, d, f] multiplied with `torch.bmm`. This
module gives `GroupedExperts` an FP8 GEMM for each projection:

  forward   x -> E4M3 and w -> E4M3 (`kernels.fp8_cast`: one fused scale-saturate-cast that also
            returns the amax), y[e] = x8[e] @ w8[e] with `torch._scaled_mm` (output in x's dtype);
            the FP8 copies are what backward keeps (half the bytes of bf16 activations);
  backward  grad -> E5M2 under the HYBRID format (E4M3 under E4M3), dx[e] = g8[e] @ w8[e]^T and
            dw[e] = x8[e]^T @ g8[e], both scaled GEMMs.

Scaling (TransformerEngine's recipe semantics): `DelayedScaling` scales each operand by
fp8_max / (amax_history reduced by `amax_compute_algo`) / 2^margin, from the amaxes the casts of
earlier steps recorded (the first step, with an empty history, scales from the current amax);
`Float8CurrentScaling` and the block recipes scale from the current amax (one extra reduction).
One scale per operand tensor: all experts of a projection share it (they have the same init and
learning rate; TransformerEngine's grouped GEMM keeps one per expert, a refinement). The amax
histories are non-persistent buffers: a resumed run restarts them (its first step scales from the
current amax).

On CUDA the kernels dispatch to Triton; the per-expert `_scaled_mm` calls are a loop (a grouped
scaled GEMM would batch them). Operand dims are zero-padded to multiples of 16 where they are not,
as FP8 GEMMs need; zeros add nothing. Expert-parallel (and expert-tensor-parallel) runs hand the
GEMMs DTensors: they run on the local shards, the output takes the placement the shards imply, and
each operand's amax is reduced (max) over the mesh, so every rank scales as one process would.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

from . import kernels

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
ALIGN = 16
DELAYED = "DelayedScaling"
PROJECTIONS = ("w1", "w3", "w2")


class AmaxHistory(nn.Module):
    """The amax history of one operand and the scale it implies."""

    def __init__(self, length: int, margin: float, algo: str, delayed: bool):
        super().__init__()
        if algo not in ("max", "most_recent"):
            raise ValueError(f"fp8 recipe amax_compute_algo = {algo!r}; choose one of max, most_recent")
        self.margin, self.algo, self.delayed = margin, algo, delayed
        self.register_buffer("history", torch.zeros(max(1, length)), persistent=False)
        self.recorded = False  # host-side: whether any amax has been recorded (no sync to find out)

    @property
    def _history(self) -> torch.Tensor:
        # distribute_module (expert parallelism) replicates buffers as DTensors: use this rank's copy
        h = self.history
        return h.to_local() if isinstance(h, DTensor) else h

    @torch.no_grad()
    def scale(self, x: torch.Tensor, fp8_dtype: torch.dtype, group=None) -> torch.Tensor:
        """fp8_max / amax / 2^margin as a 1-element fp32 tensor (no host sync). `group`: the ranks
        that hold shards of one logical operand (their amaxes are reduced, so every rank scales as
        one process would)."""
        history = self._history
        known = history.max() if self.algo == "max" else history[0]
        if self.delayed and self.recorded:
            # the history decides: no pass over x and no collective for its current amax (an
            # all-zero history still gives scale 1 below)
            amax = known
        else:
            current = _global_amax(x.detach().abs().amax().float() if x.numel() else torch.zeros_like(known), group)
            amax = torch.where(history.max() > 0, known, current) if self.delayed else current
        fp8_max = torch.finfo(fp8_dtype).max
        scale = fp8_max / (amax * 2.0 ** self.margin)
        return torch.where(amax > 0, scale, torch.ones_like(scale)).reshape(1)

    @torch.no_grad()
    def record(self, amax: torch.Tensor, group=None) -> None:
        amax = _global_amax(amax.float(), group)
        self.recorded = True
        history = self._history
        history.copy_(torch.roll(history, 1))
        history[0] = amax.float()


def _global_amax(amax: torch.Tensor, group) -> torch.Tensor:
    if group is not None:
        amax = amax.clone()
        dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=group)
    return amax


class Fp8GroupedGemm(nn.Module):
    """One projection's FP8 GEMM. call(x [E, M, K], w [E, K, N]) -> [E, M, N] (capacity
    dispatch), or call(x [R, K], w [E, K, N], ends) -> [R, N] where rows ends[e-1]:ends[e] of x
    belong to expert e (the dropless path's permuted, padded groups)."""

    def __init__(self, recipe: dict[str, Any], backend: str = "auto"):
        super().__init__()
        name = recipe.get("name", DELAYED)
        delayed = name == DELAYED
        length = int(recipe.get("amax_history_len", 1024)) if delayed else 1
        margin, algo = float(recipe.get("margin", 0)), recipe.get("amax_compute_algo", "max")
        self.backward_dtype = E4M3 if recipe.get("format", "HYBRID") == "E4M3" else E5M2
        self.backend = backend
        self.x = AmaxHistory(length, margin, algo, delayed)
        self.w = AmaxHistory(length, margin, algo, delayed)
        self.grad = AmaxHistory(length, margin, algo, delayed)
        self.amax_group = None  # set while the operands are shards of a DTensor (see _on_local_shards)

    def forward(self, x: torch.Tensor, w: torch.Tensor, ends: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(x, DTensor) or isinstance(w, DTensor):
            if ends is not None:
                raise NotImplementedError("FP8 dropless experts on DTensors (expert parallelism exchanges "
                                          "capacity slots only)")
            return _on_local_shards(self, x, w)
        if ends is None:  # [E, M, K]: E equal groups of M rows
            e, m, k = x.shape
            y = _Fp8GroupedMM.apply(x.reshape(e * m, k), w, [m * (i + 1) for i in range(e)], self)
            return y.view(e, m, -1)
        return _Fp8GroupedMM.apply(x, w, [int(v) for v in ends.tolist()], self)  # one host sync


class _Fp8GroupedMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, ends: list[int], gemm: Fp8GroupedGemm) -> torch.Tensor:
        group = ctx.group = gemm.amax_group
        sx, sw = gemm.x.scale(x, E4M3, group), gemm.w.scale(w, E4M3, group)
        x8, ax = kernels.fp8_cast(x, sx, E4M3, backend=gemm.backend)
        w8, aw = kernels.fp8_cast(w, sw, E4M3, backend=gemm.backend)
        gemm.x.record(ax, group)
        gemm.w.record(aw, group)
        ctx.save_for_backward(x8, w8, sx, sw)
        ctx.gemm, ctx.ends, ctx.x_dtype, ctx.w_dtype = gemm, ends, x.dtype, w.dtype
        out = x.new_zeros(x.size(0), w.size(2))
        for e, (lo, hi) in enumerate(_groups(ends)):
            out[lo:hi] = scaled_mm(x8[lo:hi], sx, w8[e], sw, x.dtype)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x8, w8, sx, sw = ctx.saved_tensors
        gemm: Fp8GroupedGemm = ctx.gemm
        bwd = gemm.backward_dtype
        sg = gemm.grad.scale(g, bwd, ctx.group)
        g8, ag = kernels.fp8_cast(g.contiguous(), sg, bwd, backend=gemm.backend)
        gemm.grad.record(ag, ctx.group)
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dx = g.new_zeros(x8.shape, dtype=ctx.x_dtype) if want_x else None
        dw = g.new_zeros(w8.shape, dtype=ctx.w_dtype) if want_w else None
        for e, (lo, hi) in enumerate(_groups(ctx.ends)):
            if want_x:
                dx[lo:hi] = scaled_mm(g8[lo:hi], sg, w8[e].t(), sw, ctx.x_dtype)
            if want_w:
                dw[e] = scaled_mm(x8[lo:hi].t(), sx, g8[lo:hi], sg, ctx.w_dtype)
        return dx, dw, None, None


def _groups(ends: list[int]) -> list[tuple[int, int]]:
    return list(zip([0] + ends[:-1], ends))


def scaled_mm(a8: torch.Tensor, sa: torch.Tensor, b8: torch.Tensor, sb: torch.Tensor,
              out_dtype: torch.dtype) -> torch.Tensor:
    """(a8 / sa) @ (b8 / sb), [M, K] x [K, N] -> [M, N] in out_dtype, through torch._scaled_mm
    (row-major a, column-major b, fp32 inverse scales)."""
    m, k = a8.shape
    n = b8.size(1)
    if 0 in (m, n, k):
        return torch.zeros(m, n, dtype=out_dtype, device=a8.device)
    a = _pad2(a8, ALIGN, ALIGN).contiguous()
    b = _pad2(b8, ALIGN, ALIGN).t().contiguous().t()  # column-major, as _scaled_mm needs
    out = torch._scaled_mm(a, b, scale_a=sa.reciprocal().reshape(()), scale_b=sb.reciprocal().reshape(()),
                           out_dtype=out_dtype)
    return out[:m, :n]


def _pad2(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Zero-pad a 2-D FP8 tensor up to multiples of (rows, cols); padding works on its bytes."""
    pr, pc = -t.size(0) % rows, -t.size(1) % cols
    if not (pr or pc):
        return t
    raw = F.pad(t.view(torch.uint8), (0, pc, 0, pr))  # FP8 zero is the all-zero byte
    return raw.view(t.dtype)


def _on_local_shards(gemm: Fp8GroupedGemm, x, w) -> DTensor:
    """The GEMM on this rank's shards; the output's placement follows from the operands' (batched
    over experts: dim 0; Megatron splits: column-parallel w on dim 2, row-parallel on dim 1)."""
    if not (isinstance(x, DTensor) and isinstance(w, DTensor)):
        raise TypeError("FP8 expert GEMMs take both operands as DTensors or neither")
    px, pw = x.placements, w.placements
    if len(px) != 1 or len(pw) != 1:
        raise NotImplementedError(f"FP8 expert GEMMs on a {len(px)}-D mesh; expected 1-D (ep or tp)")
    rules = {(Shard(0), Shard(0)): Shard(0), (Replicate(), Shard(2)): Shard(2), (Shard(2), Shard(1)): Partial(),
             (Replicate(), Replicate()): Replicate()}
    out = rules.get((px[0], pw[0]))
    if out is None:
        raise NotImplementedError(f"FP8 expert GEMM of operands placed {px[0]} x {pw[0]}; supported: "
                                  + ", ".join(f"{a} x {b}" for a, b in rules))
    # a replicated input times a column-split weight: each rank's input gradient is a partial sum
    # (over its slice of the inner width), which the input's own (Replicate) placement would hide
    x_grad = (Partial(),) if (px[0], pw[0]) == (Replicate(), Shard(2)) else px
    gemm.amax_group = x.device_mesh.get_group()
    try:
        y = gemm(x.to_local(grad_placements=x_grad), w.to_local())
    finally:
        gemm.amax_group = None
    return DTensor.from_local(y, x.device_mesh, (out,), run_check=False)


def convert_grouped_experts(model: nn.Module, names: list[str], recipe: dict[str, Any],
                            backend: str = "auto") -> list[str]:
    """Give the GroupedExperts modules named in `names` FP8 GEMMs (all projections; the capacity
    and the dropless dispatch both use them); returns the names converted."""
    done = []
    for name in names:
        experts = model.get_submodule(name)
        if not hasattr(experts, "fp8"):
            raise TypeError(f"{name} is a {type(experts).__name__}, not the GroupedExperts of an MoE layer")
        projections = [p for p in PROJECTIONS if getattr(experts, p, None) is not None]
        experts.fp8 = nn.ModuleDict({p: Fp8GroupedGemm(recipe, backend) for p in projections})
        done.append(name)
    return done


def fp8_expert_names(model: nn.Module, plan: dict[str, Any]) -> list[str]:
    """GroupedExperts modules of `model` whose GEMMs plan.json's FP8 decisions mark FP8, every one
    of them. The compiler traces capacity dispatch as three bmm nodes under `...mlp.experts` and
    the dropless dispatch as one `dropless_experts` leaf under `...mlp`."""
    decisions: dict[str, list[bool]] = {}
    for g in plan.get("fp8", {}).get("gemms", []):
        module = (g.get("module") or "").removeprefix("model.")
        if module.endswith(".experts"):
            decisions.setdefault(module, []).append(bool(g.get("fp8")))
        elif g.get("node", "").endswith("dropless_experts"):
            decisions.setdefault(module + ".experts", []).append(bool(g.get("fp8")))
    names = []
    for name, mod in model.named_modules():
        marks = decisions.get(name)
        if marks and all(marks) and hasattr(mod, "fp8"):
            names.append(name)
    return names
