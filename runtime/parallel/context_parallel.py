"""Context parallelism: the decoder blocks of one sequence split over the `cp` ranks.

Layout (load-balanced, as the planner costs it). Each sequence of S tokens is cut into 2*cp
chunks of S/(2*cp); cp rank r holds chunks r and 2*cp-1-r. Under a causal mask a query's work
grows with its position, so pairing an early chunk with a late one gives every rank the same
attention work (r + (2*cp-1-r) = 2*cp-1 chunk-pairs of keys for each rank).

What runs where:
- everything before the first decoder block (embedding, learned positions, projectors, video
  encoders, late-fusion media) runs on the whole sequence on every cp rank; the residual stream is
  then cut to this rank's two chunks (`shard`);
- in each block, queries, MLPs and norms see only this rank's tokens. Keys and values are
  all-gathered over the cp group (Llama-3-style all-gather context parallelism), in rank order;
  the attention mask is cut to this rank's query rows and its key columns permuted to that rank
  order, so every mask kind of runtime/masks.py (causal, bidirectional image spans, prefix-LM,
  segment memory, and a layer's sliding window, measured between global positions) gives
  exactly the single-process rows. Causal, which the model passes as None
  for the fused kernel, becomes explicit rows. RoPE rotates each token at its global position,
  or, in packed rows, at its position in its document (the model's positions of the whole row,
  cut to this rank's tokens like the residual stream);
- MoE layers with whole experts (etp = 1) route this rank's tokens and sum what they read of the
  whole micro-batch (load, balancing-loss statistics) over cp (moe_local_routing.py): the same
  outputs, experts run once per token; a layer with a capacity numbers its copies in the whole
  sequence's order from the cp ranks' copy counts (moe_local_routing_order.py), so capacity and
  token dropping (first come, first served in sequence order) are exactly those of one process.
  With experts split by width (etp = tp) a layer gathers its input to the whole sequence (in
  natural order) and keeps its output rows;
- after the final norm the hidden state is all-gathered back into natural order, so logits, the
  losses and the contrastive / flow heads see the whole sequence as before;
- multi-token prediction (runtime/mtp.py): each module reads the decoder's output before its final
  norm (this rank's tokens) and the input embedding shifted by k on the whole sequence, then cut
  to this rank's tokens, so the shift crosses chunk boundaries exactly; its block is split like
  a decoder block, and its norm before the shared head gathers the whole sequence again.
A ring (P2P, overlapped with the block's compute) exchange of K/V chunks would hide the all-gather;
it is not done here.

Gradients. Every cross-rank data flow is an all-gather whose backward is a reduce-scatter (sum)
of the partial gradients (`gather_sequence`). Each cp rank computes the whole loss L, so the
autograd of rank r computes the gradient of F = sum over the cp ranks of L with respect to rank
r's copies of the parameters; tying the copies, sum_r dF/dθ_r = dF/dθ = cp * dL/dθ. So: parameters
are replicated over cp, their gradients are summed over the cp group and divided by cp
(`average_grads_over_cp`, after the data-parallel reductions), which leaves exactly the
single-process gradient whatever the parameter (block weights that only saw this rank's tokens,
heads and encoders that saw everything, or both). The loss scaling of runner.py is unchanged: the
cp ranks act as replicas that read the same data. torchtitan folds cp into the FSDP mesh
(dp_shard x cp) to merge this all-reduce with FSDP's reduce-scatter; a separate reduction here
covers FSDP shards, replicated scalars and expert parameters the same way.

Random numbers: the objective's masks and noise (masked generation, flow matching) are counter-based
(vlac.runtime.noise), the same on every rank. Whatever still draws from the global generator
before the first block (dropout in encoders and projectors) runs on the whole sequence on every cp
rank and must draw alike, so the cp ranks start from cp rank 0's random state
(`agree_on_random_state`) and then consume it identically.

Pipeline parallelism: each stage runs its blocks on this rank's tokens. The first stage cuts the
sequence at its first block as above; the hidden state it sends is this rank's chunks, and a later
stage, whose blocks receive them, enters the same layout (`enter`, from the micro-batch's length:
the layout depends only on (seq_len, cp, rank), so every stage cuts the sequence alike). The masks,
the dual-stream selector and the micro-batch fields reach every stage whole and are cut per block;
the last stage gathers after the final norm, so its loss sees the whole sequence. The pp
point-to-point exchanges connect the same cp rank of neighbouring stages.

Training only: decoding with a KV cache (runtime/generate.py) runs on one process.
Not done (refused with a LayoutError): per-modality clipping (it averages its own gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from vlac.spec import Experiment

from ..kernels import apply_rope
from ..layers import rotate_at
from .mesh import LayoutError
from .moe_local_routing import route_locally, routes_over_cp

SEQ = 1  # the sequence dimension of [batch, seq, ...] activations


# ---- the chunk layout (pure index maths) ---------------------------------------------------------
def check_sequence(seq_len: int, cp: int) -> None:
    if seq_len % (2 * cp):
        raise LayoutError(f"plan.cp = {cp} needs sequences of a multiple of 2*cp = {2 * cp} tokens (each is split "
                          f"into 2*cp chunks) but train.seq_len is {seq_len}; re-plan with a cp whose 2*cp divides "
                          f"{seq_len} (--pin cp=...) or change train.seq_len")


def rank_chunks(cp: int, rank: int) -> tuple[int, int]:
    """The two chunks (of 2*cp) that cp rank `rank` holds: an early one and its mirror."""
    return rank, 2 * cp - 1 - rank


def rank_positions(seq_len: int, cp: int, rank: int) -> torch.Tensor:
    """Global positions of this rank's tokens, ascending: [chunk r, chunk 2*cp-1-r]."""
    check_sequence(seq_len, cp)
    c = seq_len // (2 * cp)
    return torch.cat([torch.arange(i * c, (i + 1) * c) for i in rank_chunks(cp, rank)])


def gathered_positions(seq_len: int, cp: int) -> torch.Tensor:
    """Global position of each token of an all-gather over the cp ranks (rank order)."""
    return torch.cat([rank_positions(seq_len, cp, r) for r in range(cp)])


@dataclass(frozen=True)
class SequenceLayout:
    """Index tensors of one sequence length, on one device."""

    local: torch.Tensor  # [S/cp] global positions of this rank's tokens
    gathered: torch.Tensor  # [S] global position of each gathered token
    restore: torch.Tensor  # [S] index into the gathered tokens that puts them in natural order
    causal_rows: torch.Tensor  # [1, 1, S/cp, S] True where a local query may see a gathered key

    @classmethod
    def build(cls, seq_len: int, cp: int, rank: int, device: torch.device) -> "SequenceLayout":
        local = rank_positions(seq_len, cp, rank).to(device)
        gathered = gathered_positions(seq_len, cp).to(device)
        rows = (gathered.unsqueeze(0) <= local.unsqueeze(1)).view(1, 1, local.numel(), seq_len)
        return cls(local, gathered, torch.argsort(gathered), rows)

    def mask_rows(self, mask: torch.Tensor | None) -> torch.Tensor:
        """The rows of a whole-sequence mask [.., S, S] (None = causal) for this rank's queries,
        with columns in gathered-key order."""
        if mask is None:
            return self.causal_rows
        return mask.index_select(-2, self.local).index_select(-1, self.gathered)


# ---- collectives ---------------------------------------------------------------------------------
class _GatherSequence(torch.autograd.Function):
    """All-gather along `dim` in rank order; the backward reduce-scatters (sums) the gradient, since
    every rank's use of a gathered slice contributes to that slice's owner."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.dim, ctx.group = dim, group
        src = x.movedim(dim, 0).contiguous()
        out = src.new_empty((dist.get_world_size(group) * src.size(0), *src.shape[1:]))
        dist.all_gather_into_tensor(out, src, group=group)
        return out.movedim(0, dim).contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        src = grad.movedim(ctx.dim, 0).contiguous()
        out = src.new_empty((src.size(0) // dist.get_world_size(ctx.group), *src.shape[1:]))
        dist.reduce_scatter_tensor(out, src, op=dist.ReduceOp.SUM, group=ctx.group)
        # contiguous: a pipeline stage sends this gradient on, and point-to-point needs dense buffers
        return out.movedim(0, ctx.dim).contiguous(), None, None


def gather_sequence(x: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    return _GatherSequence.apply(x, dim, group)


@torch.no_grad()
def average_grads_over_cp(params: list[nn.Parameter], group: dist.ProcessGroup | None, cp: int) -> None:
    """Sum the gradients over the cp ranks and divide by cp (see the module docstring): one
    all-reduce per dtype over the local shards (cp ranks hold the same FSDP shards)."""
    if group is None:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
            by_dtype.setdefault(g.dtype, []).append(g)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=group)
        flat.div_(cp)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def agree_on_random_state(group: dist.ProcessGroup, device: torch.device) -> None:
    """Give every cp rank cp rank 0's random state (CPU, and the accelerator's). The cp ranks
    run the same code on the same samples, so from here on they draw the same random numbers: the
    dropout masks of the whole sequence before the first block then agree, and the chunks they cut
    belong to one sequence."""
    states = [(torch.get_rng_state, torch.set_rng_state)]
    if device.type == "cuda":
        states.append((lambda: torch.cuda.get_rng_state(device), lambda t: torch.cuda.set_rng_state(t, device)))
    wire = device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    for get, set_ in states:
        state = get().to(wire)
        dist.broadcast(state, group=group, group_src=0)
        set_(state.cpu())


# ---- applying it to the model --------------------------------------------------------------------
class ContextShard:
    """This rank's place in the cp group and the layout of the sequence now in flight; the hooks
    and the attention seams of one model share it."""

    def __init__(self, group: dist.ProcessGroup, cp: int, rank: int):
        self.group, self.cp, self.rank = group, cp, rank
        self._layouts: dict[tuple[int, torch.device], SequenceLayout] = {}
        self.layout: SequenceLayout | None = None
        self._mask_in: torch.Tensor | None = None
        self._mask_out: torch.Tensor | None = None

    def enter(self, seq_len: int, device: torch.device) -> None:
        """Start a forward over sequences of `seq_len` tokens (a later pipeline stage, whose input
        is already this rank's tokens, enters with the micro-batch's length)."""
        key = (seq_len, device)
        if key not in self._layouts:
            self._layouts[key] = SequenceLayout.build(seq_len, self.cp, self.rank, device)
        self.layout = self._layouts[key]
        self._mask_in = self._mask_out = None

    def begin(self, x: torch.Tensor) -> torch.Tensor:
        """The residual stream [B, S, d] of the whole sequence -> this rank's tokens."""
        self.enter(x.size(SEQ), x.device)
        return x.index_select(SEQ, self.layout.local)

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """A whole-sequence per-token tensor [B, S, ...] -> this rank's tokens."""
        return x.index_select(SEQ, self.layout.local)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's tokens [B, S/cp, ...] -> the whole sequence in natural order."""
        return gather_sequence(x, SEQ, self.group).index_select(SEQ, self.layout.restore)

    def gather_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, S/cp, H, D] of every rank, in rank order (one collective)."""
        kv = gather_sequence(torch.cat([k, v], dim=-1), SEQ, self.group)
        return kv.split(k.size(-1), dim=-1)

    def mask_rows(self, mask: torch.Tensor | None) -> torch.Tensor:
        """This rank's rows of the model's mask, cut once per forward."""
        if mask is None or mask is not self._mask_in:  # the same whole-sequence mask for every block
            self._mask_in, self._mask_out = mask, self.layout.mask_rows(mask)
        return self._mask_out


class RotaryAtPositions(nn.Module):
    """RoPE at each local token's global position (the model's Rotary assumes contiguous positions
    from `start`), or at the given per-token `positions` (packed rows; the block's inputs hook has
    cut them to this rank's tokens). Shares the replaced Rotary's tables."""

    def __init__(self, rotary: nn.Module, shard: ContextShard):
        super().__init__()
        self.register_buffer("cos", rotary.cos, persistent=False)
        self.register_buffer("sin", rotary.sin, persistent=False)
        self.shard = shard

    def forward(self, q: torch.Tensor, k: torch.Tensor, start: int = 0,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if positions is not None:
            return rotate_at(q, k, self.cos, self.sin, positions)
        pos = self.shard.layout.local + start
        cos = self.cos.index_select(0, pos).to(q.dtype)
        sin = self.sin.index_select(0, pos).to(q.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


def _is_moe(mlp: nn.Module) -> bool:
    return hasattr(mlp, "router") and hasattr(mlp, "experts")


def _block_inputs(shard: ContextShard):
    """Block(x, mask, stream, positions): the mask cut to this rank's rows, the dual-stream selector
    and the per-token positions to its tokens."""
    def pre(_, args, kwargs):
        args = list(args)
        if len(args) > 1:
            args[1] = shard.mask_rows(args[1])
        else:
            kwargs["mask"] = shard.mask_rows(kwargs.get("mask"))
        for i, name in ((2, "stream"), (3, "positions")):
            if len(args) > i:
                if args[i] is not None:
                    args[i] = shard.shard(args[i])
            elif kwargs.get(name) is not None:
                kwargs[name] = shard.shard(kwargs[name])
        return tuple(args), kwargs
    return pre


def apply_context_parallel(model: nn.Module, exp: Experiment, cp_mesh: DeviceMesh,
                           expert_tp: bool = False) -> ContextShard:
    """Split the decoder of `model` (a VLAModel, after tensor parallelism) over `cp_mesh` in place.
    `expert_tp`: its MoE experts are split by width over tp (etp > 1)."""
    cp, rank = cp_mesh.size(), cp_mesh.get_local_rank()
    check_sequence(exp.train.seq_len, cp)
    if exp.optimizer.per_modality_clip:
        raise LayoutError(f"plan.cp = {cp} with optimizer.per_modality_clip: the per-modality backward passes "
                          f"average their gradients themselves, not over the cp ranks; re-plan with --pin cp=1 "
                          f"or turn per_modality_clip off")
    # the MTP modules' blocks (runtime/mtp.py) split like the decoder's, on this rank's tokens
    mtp = list(getattr(model, "mtp", None) or [])
    blocks = [*model.layers, *(m.block for m in mtp)]
    # a dual-stream block's second attention projects (and rotates) its own q/k/v
    attns = [a for block in blocks for a in (block.attn, getattr(block.media, "attn", None)) if a is not None]
    if not all(a.causal for a in attns):
        raise LayoutError(f"plan.cp = {cp} with a non-causal decoder attention: a None mask is read as causal "
                          f"rows here; re-plan with --pin cp=1")
    shard = ContextShard(cp_mesh.get_group(), cp, rank)
    agree_on_random_state(shard.group, model.norm.weight.device)  # a vector: never left on meta (materialize.py)
    cross = getattr(model, "cross_layers", None)
    first = cross["0"] if cross is not None and "0" in cross else model.layers[0]
    # before tensor parallelism's own hooks: sequence parallelism then splits this rank's tokens
    first.register_forward_pre_hook(lambda _, args: (shard.begin(args[0]), *args[1:]), prepend=True)
    for attn in attns:
        attn.kv_gather = shard.gather_kv
        attn.token_positions = lambda: (shard.layout.local, shard.layout.gathered)  # sliding windows' distances
        if attn.rotary is not None:
            attn.rotary = RotaryAtPositions(attn.rotary, shard)
    for block in blocks:
        block.register_forward_pre_hook(_block_inputs(shard), with_kwargs=True)
        if _is_moe(block.mlp) and routes_over_cp(expert_tp):  # this rank's tokens (see above)
            route_locally(block.mlp, shard.group, "cp", cut=lambda pos, size, r: pos[rank_positions(pos.numel(), size, r)])
        elif _is_moe(block.mlp):
            # after sequence parallelism's gather of the input, before its split of the output
            block.mlp.register_forward_pre_hook(lambda _, args: (shard.gather(args[0]), *args[1:]))
            block.mlp.register_forward_hook(lambda _, __, out: (shard.shard(out[0]), *out[1:]), prepend=True)
    model.norm.register_forward_hook(lambda _, __, out: shard.gather(out))
    for module in mtp:  # the decoder's output arrives as this rank's tokens; the embedding, shifted, is whole
        module.embed_norm.register_forward_pre_hook(lambda _, args: (shard.shard(args[0]), *args[1:]), prepend=True)
        module.norm.register_forward_hook(lambda _, __, out: shard.gather(out))  # for the shared head
    model.context_shard = shard  # pipeline stages after the first enter the layout themselves (pipeline.py)
    return shard
