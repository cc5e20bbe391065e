"""Deferred construction: the model's weight matrices stay on the meta device until the parallel
layout is known, then each rank allocates and initialises only the pieces it holds.

`weights_on_meta()` lets the model's constructors run as usual, except that every parameter of
two or more dimensions is registered on the meta device (a shape, no storage). Vectors and
scalars (norm weights, biases, gates, temperatures) and all buffers (rotary tables, expert biases)
keep their constructors' values: they are a sliver of the model (about 1/hidden of it) and their
constructors know what they should be. The meta weights are then laid out like any others
(tensor-parallel DTensors, expert shards, pipeline stages, FSDP2 shards) and `materialize` fills
in what this rank holds.

Initial values (GPT-2 style, `weight_std`): every weight matrix is N(0, std), drawn so that any
piece of it can be drawn alone. The tensor is read as rows (all dimensions but the last,
flattened) by its last dimension; rows are grouped into blocks of about BLOCK_ELEMENTS values, and
block b of the parameter named `key` comes from its own generator, seeded from (seed, key, b). A
rank draws the blocks its piece overlaps, one at a time, and keeps the overlap: its peak is its
share plus one block (1 MiB), whatever the layout. Drawing each whole parameter and slicing it
would cost a whole parameter per rank (a 128K x 8192 embedding is 4 GiB), and an offset-based
generator (DTensor's own) exists only on CUDA and depends on the layout. Every layout, one process
included (`build_model` runs the same path), therefore starts from the same values. Values are
drawn on the CPU generator and then copied: they do not depend on the device either.

`key` is the parameter's name in the whole model; a tied weight (`head.weight` is `embed.weight`)
has one key, the first name, so pipeline stages that each hold a copy start them equal.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn

BLOCK_ELEMENTS = 1 << 18  # values per generator stream (rows of a weight, grouped)
STD = 0.02
RESIDUAL_OUTPUTS = ("wo.weight", "w2.weight", "experts.w2")  # scaled by 1/sqrt(2 * layers)


@dataclass
class DeferredInit:
    """What `materialize` needs to fill a model built under `weights_on_meta`: the seed, the
    layer count (for the residual scaling) and the tied names (name -> key)."""

    seed: int
    layers: int
    aliases: dict[str, str] = field(default_factory=dict)

    def key(self, name: str) -> str:
        return self.aliases.get(name, name)


@contextmanager
def weights_on_meta():
    """Parameters of two or more dimensions registered inside this block go to the meta device
    (their constructors' in-place inits then act on meta: nothing is drawn or stored). The
    constructor's own tensor is dropped at once; `torch.empty` never touches its pages."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.dim() >= 2 and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """Every name of a shared parameter but its first -> its first name."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def weight_std(key: str, shape: torch.Size, layers: int) -> float:
    """N(0, 0.02), residual output projections (attention wo, MLP and expert w2) scaled by
    1/sqrt(2 * layers) as in GPT-2; a router [experts, hidden] keeps N(0, 1/sqrt(hidden)) (the
    scale its constructor, runtime/moe.py, gives it)."""
    if "router" in key:
        return shape[-1] ** -0.5
    if key.endswith(RESIDUAL_OUTPUTS):
        return STD / math.sqrt(2 * layers)
    return STD


def stream_seed(seed: int, key: str, block: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{key}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def block_rows(shape: torch.Size) -> int:
    """Rows per generator stream: a function of the global shape only, so every layout agrees."""
    return max(1, BLOCK_ELEMENTS // shape[-1])


def normal_piece(seed: int, key: str, shape: torch.Size, index: list[torch.Tensor], std: float) -> torch.Tensor:
    """The values at the global indices `index` (one sorted index tensor per dimension) of the
    N(0, std) tensor `key` of `shape`, as a float32 CPU tensor of shape [len(i) for i in index]."""
    out = torch.empty([i.numel() for i in index])
    fill_normal(out.view(-1, index[-1].numel()), seed, key, shape, index, std)
    return out


def fill_normal(out: torch.Tensor, seed: int, key: str, shape: torch.Size, index: list[torch.Tensor],
                std: float) -> None:
    """Write `normal_piece` into `out` (a [rows, columns] view of the piece, any device or dtype)
    block by block, so that nothing larger than one block is drawn besides the piece itself."""
    width, per_block = shape[-1], block_rows(shape)
    rows = index[0]
    for dim in range(1, len(shape) - 1):  # flatten the leading dimensions (row-major, stays sorted)
        rows = (rows.unsqueeze(1) * shape[dim] + index[dim].unsqueeze(0)).reshape(-1)
    cols = index[-1]
    whole_rows = cols.numel() == width
    total_rows = math.prod(shape[:-1])
    blocks, counts = torch.unique_consecutive(rows // per_block, return_counts=True)
    start = 0
    for b, n in zip(blocks.tolist(), counts.tolist()):
        first = b * per_block
        gen = torch.Generator().manual_seed(stream_seed(seed, key, b))
        piece = torch.randn(min(per_block, total_rows - first), width, generator=gen).mul_(std)
        if n != piece.size(0):
            piece = piece[rows[start:start + n] - first]
        out[start:start + n] = piece if whole_rows else piece[:, cols]
        start += n


def local_indices(t: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:
    """This rank's piece of `t` and, per dimension, the global indices it holds. A DTensor's
    placements are applied to index ranges in mesh order with DTensor's own splitting, so strided
    shards (FSDP over tensor parallelism on the same dimension) come out right too."""
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    if not isinstance(t, DTensor):
        return t, [list(range(n)) for n in t.shape]
    coordinate = t.device_mesh.get_coordinate()
    index = [torch.arange(n) for n in t.shape]
    for mesh_dim, placement in enumerate(t.placements):
        if not isinstance(placement, (Shard, _StridedShard)):  # Replicate, Partial: the whole dimension
            continue
        d = placement.dim
        along_first = (_StridedShard(0, split_factor=placement.split_factor) if isinstance(placement, _StridedShard)
                       else Shard(0))
        chunks, _ = along_first._split_tensor(index[d], t.device_mesh.size(mesh_dim), with_padding=False)
        index[d] = chunks[coordinate[mesh_dim]]
    local = t.to_local()
    if tuple(local.shape) != tuple(len(i) for i in index):
        raise RuntimeError(f"a DTensor's local shape {tuple(local.shape)} is not what its placements {t.placements} "
                           f"give; cannot locate its piece")
    return local, [i.tolist() for i in index]


def reinstall_grad_hooks(params: list[nn.Parameter]) -> None:
    """Gradient hooks registered before materialising (tensor parallelism's sum over tp of a
    gate's gradient under sequence parallelism) stay listed on the parameter, but `_apply`'s
    swap_tensors leaves the autograd side of them with the tensor swapped out, so they would no
    longer run: assigning a hook dict again registers it with the tensor the parameter now holds."""
    for p in params:
        if p._backward_hooks:
            p._backward_hooks = p._backward_hooks
        if p._post_accumulate_grad_hooks:
            p._post_accumulate_grad_hooks = p._post_accumulate_grad_hooks


def has_meta_weights(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


@torch.no_grad()
def materialize(roots: list[nn.Module], names: nn.Module, deferred: DeferredInit, device: torch.device) -> int:
    """Allocate on `device` and initialise every meta parameter under `roots` (the modules whose
    `_apply` reaches all of this rank's parameters: the model, or its pipeline stages, which carry
    the FSDP state), and move the other tensors there. `names` is the module under which the
    parameters have their whole-model names (the model, or the pipeline's holder view). Returns
    the bytes allocated for the weights."""
    pending = {}  # (module, attribute) -> key; the modules outlive _apply, the parameters may not
    for mod_name, module in names.named_modules(remove_duplicate=False):
        for attr, p in module._parameters.items():
            if p is not None and p.is_meta:
                full = f"{mod_name}.{attr}" if mod_name else attr
                if p.dim() < 2:
                    raise RuntimeError(f"{full} is on the meta device but has {p.dim()} dimension(s): only "
                                       f"weight matrices are deferred (runtime/materialize.py)")
                pending[(module, attr)] = deferred.key(full)

    def to_device(t: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(t, device=device) if t.is_meta else t.to(device)

    hooked = [p for root in roots for p in root.parameters() if p._backward_hooks or p._post_accumulate_grad_hooks]
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)  # keeps each parameter object (ties, FSDP)
    try:
        for root in roots:
            root._apply(to_device)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    reinstall_grad_hooks(hooked)
    allocated, done = 0, set()
    for (module, attr), key in pending.items():
        p = module._parameters[attr]
        if id(p) in done:  # a tied weight held twice here
            continue
        done.add(id(p))
        local, index = local_indices(p)
        if local.numel():
            index = [torch.tensor(i, dtype=torch.long) for i in index]
            std = weight_std(key, p.shape, deferred.layers)
            if local.is_contiguous():
                fill_normal(local.view(-1, local.size(-1)), deferred.seed, key, p.shape, index, std)
            else:
                local.copy_(normal_piece(deferred.seed, key, p.shape, index, std))
        allocated += local.numel() * local.element_size()
    leftover = [n for n, p in names.named_parameters() if p.is_meta]
    if leftover:
        raise RuntimeError(f"parameters {leftover[:3]} are still on the meta device after materialize: they are "
                           f"not under the modules it was given")
    return allocated
