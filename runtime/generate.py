"""Generation with a KV cache: prefill the prompt once, then decode one token per step, greedy or
sampled (temperature, top-k), restricted to one modality's range of the unified vocabulary.

The cache is preallocated from `kv_cache` settings ([B, kv_heads, max_length, head_dim] per
layer and per K and V). "bf16"/"fp16"/"fp32" are stored as such on GPUs and in fp32 on CPU (the
compute dtype there). "fp8" is stored as float8_e4m3fn on every device, with one fp32 scale per
(sequence, head, position): each cached row of head_dim values is one block of the blockwise FP8
cast kernel (vlac.runtime.kernels.fp8_blockwise_cast, Triton on CUDA). Attention reads the cache
dequantised to the compute dtype, one layer at a time (the runtime has no FP8 attention kernel):
what FP8 saves is the resident cache, (head_dim + 4) / head_dim bytes per value instead of 2.

Why per-row scales rather than one scale per tensor or per (layer, head): the cache is written
one token at a time and never rewritten. A per-row scale is fixed when the row is written, needs
no calibration pass and no requantisation when a later token has a larger amax, and one outlier
token cannot cost every other token its precision. Its price is 4 bytes per head_dim values
(3 % at head_dim 128), and every row's largest value lands exactly on the FP8 maximum.

MoE layers route dropless while decoding: capacity is a training-time device, and a one-token
step must not drop its own token. Late fusion encodes the media once, at the prefill, and reuses
them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from vlac.spec import Experiment
from vlac.spec.latent_attention import head_shape

from . import kernels
from .kernels._triton import next_power_of_2
from .model import VLAModel
from .moe import MoELayer

FP8_CACHE_DTYPE = torch.float8_e4m3fn
CACHE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp8": FP8_CACHE_DTYPE}


class CacheTensor:
    """Keys or values of one layer, [B, H_kv, max_length, D], stored in the dtype they are read in
    (up to a cast)."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
        self.data = torch.zeros(shape, dtype=dtype, device=device)

    def write(self, start: int, x: torch.Tensor) -> None:
        self.data[:, :, start:start + x.size(2)] = x.to(self.data.dtype)

    def read(self, end: int, dtype: torch.dtype) -> torch.Tensor:
        return self.data[:, :, :end].to(dtype)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


class FP8CacheTensor:
    """Keys or values of one layer in float8_e4m3fn, [B, H_kv, max_length, D], with an fp32 scale
    per row of D values, [B, H_kv, max_length]: stored = fp8(value * scale), read = stored / scale.

    The rows are cast by the blockwise FP8 kernel with one block per row (block width D rounded
    up to a power of two, the kernel's tile extent; the padding is masked and does not change a
    row's amax). `backend` is the kernel dispatch's ("auto" | "torch" | "triton").
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device, backend: str = "auto"):
        b, h, length, d = shape
        self.data = torch.zeros(shape, dtype=FP8_CACHE_DTYPE, device=device)
        self.scales = torch.ones(b, h, length, dtype=torch.float32, device=device)
        self.block = (1, next_power_of_2(d))
        self.backend = backend

    def write(self, start: int, x: torch.Tensor) -> None:
        b, h, s, d = x.shape
        q, scales = kernels.fp8_blockwise_cast(x.reshape(b * h * s, d), self.block, FP8_CACHE_DTYPE,
                                               backend=self.backend)
        self.data[:, :, start:start + s] = q.view(b, h, s, d)
        self.scales[:, :, start:start + s] = scales.view(b, h, s)

    def read(self, end: int, dtype: torch.dtype) -> torch.Tensor:
        # dequantise in fp32 (the scale is fp32), then to the compute dtype
        return (self.data[:, :, :end].float() / self.scales[:, :, :end, None]).to(dtype)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.scales.numel() * self.scales.element_size()


class LayerCache:
    """Keys and values of one attention layer (CacheTensor or FP8CacheTensor each)."""

    def __init__(self, owner: "KVCache", k: CacheTensor | FP8CacheTensor, v: CacheTensor | FP8CacheTensor):
        self.owner, self.k, self.v = owner, k, v

    @property
    def length(self) -> int:
        return self.owner.length

    @property
    def max_length(self) -> int:
        return self.k.data.size(2)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new block's k and v ([B, H_kv, s, D]); return all cached k and v so far, in
        the new block's dtype."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_length:
            raise ValueError(f"KV cache overflow: {end} positions exceed kv_cache.max_length {self.max_length}; "
                             f"raise kv_cache.max_length or generate fewer tokens")
        self.k.write(start, k)
        self.v.write(start, v)
        return self.k.read(end, k.dtype), self.v.read(end, v.dtype)

    def causal_mask(self, s: int, device) -> torch.Tensor:
        """New block of s queries: all cached keys, causal inside the block. [1, 1, s, length+s]."""
        q = torch.arange(s, device=device).unsqueeze(1) + self.length
        k = torch.arange(self.length + s, device=device).unsqueeze(0)
        return (k <= q).view(1, 1, s, -1)


@dataclass
class KVCache:
    layers: list[LayerCache] = field(default_factory=list)
    length: int = 0
    media: tuple[torch.Tensor, torch.Tensor] | None = None  # late fusion: encoded media, reused each step

    def advance(self, n: int) -> None:
        self.length += n

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds (FP8 values and their scales for an FP8 cache), media excluded."""
        return sum(layer.nbytes for layer in self.layers)


def cache_dtype(exp: Experiment, device: torch.device) -> torch.dtype:
    """The storage dtype of `exp.kv_cache.dtype` on `device`: FP8 everywhere; the others as
    named on GPUs and fp32 on CPU (where the model computes in fp32)."""
    name = exp.kv_cache.dtype
    if name == "fp8":
        return FP8_CACHE_DTYPE
    return torch.float32 if device.type == "cpu" else CACHE_DTYPES[name]


def make_cache(model: VLAModel, batch_size: int, max_length: int | None = None,
               dtype: torch.dtype | None = None, backend: str = "auto") -> KVCache:
    """An empty cache for `batch_size` sequences of up to `max_length` tokens (default
    kv_cache.max_length, else the context length). `dtype` overrides the spec's cache dtype
    (torch.float8_e4m3fn for the FP8 cache); `backend` picks the FP8 cast kernel."""
    exp: Experiment = model.exp
    bb = exp.backbone
    length = max_length or exp.kv_cache.max_length or bb.context_length
    dev = model.embed.weight.device
    dtype = dtype or cache_dtype(exp, dev)
    if dtype not in CACHE_DTYPES.values():
        raise ValueError(f"make_cache dtype must be one of {list(CACHE_DTYPES.values())}; got {dtype}")
    if backend not in kernels.BACKENDS:
        raise ValueError(f"make_cache backend must be one of {', '.join(map(repr, kernels.BACKENDS))}; got {backend!r}")
    heads = head_shape(bb)  # latent attention (backbone.mla) caches per-head keys and values of their own widths

    def tensor(width: int) -> CacheTensor | FP8CacheTensor:
        shape = (batch_size, heads.kv_heads, length, width)
        return FP8CacheTensor(shape, dev, backend) if dtype == FP8_CACHE_DTYPE else CacheTensor(shape, dtype, dev)

    cache = KVCache()
    for _ in model.layers:
        cache.layers.append(LayerCache(cache, tensor(heads.qk_dim), tensor(heads.v_dim)))
    return cache


@contextlib.contextmanager
def decoding(model: VLAModel, cache: KVCache):
    """Attach `cache` to the model and its attention layers for the duration of the block."""
    attns = [block.attn for block in model.layers]
    model.kv_cache = cache
    for attn, layer in zip(attns, cache.layers):
        attn.kv_cache = layer
    try:
        yield
    finally:
        model.kv_cache = None
        for attn in attns:
            attn.kv_cache = None


@contextlib.contextmanager
def dropless_routing(model: torch.nn.Module):
    layers = [m for m in model.modules() if isinstance(m, MoELayer)]
    before = [m.dropless for m in layers]
    for m in layers:
        m.dropless = True
    try:
        yield
    finally:
        for m, d in zip(layers, before):
            m.dropless = d


def vocab_range(model: VLAModel, modality: str | None) -> tuple[int, int]:
    layout = model.exp.vocab_layout()
    if modality is None:
        return 0, layout.size
    try:
        r = layout.range_of(modality)
    except KeyError:
        names = [x.modality for x in layout.ranges]
        raise ValueError(f"modality {modality!r} has no tokens to generate; choose from {names}") from None
    return r.offset, r.offset + r.size


@torch.no_grad()
def generate(model: VLAModel, prompt: dict[str, torch.Tensor], steps: int, modality: str | None = None,
             temperature: float = 0.0, top_k: int | None = None, generator: torch.Generator | None = None,
             cache: KVCache | None = None) -> torch.Tensor:
    """Continue `prompt` (a batch dict; tokens [B, P]) by `steps` tokens of `modality` (None: any
    token of the unified vocabulary). temperature 0 is greedy. Returns [B, steps] token ids."""
    was_training = model.training
    model.eval()
    tokens = prompt["tokens"]
    b, p = tokens.shape
    cache = cache or make_cache(model, b, p + steps)
    lo, hi = vocab_range(model, modality)
    out = []
    try:
        with dropless_routing(model), decoding(model, cache):
            logits = model(prompt)["logits"][:, -1]
            for step in range(steps):
                nxt = _choose(logits, lo, hi, temperature, top_k, generator)
                out.append(nxt)
                if step + 1 < steps:
                    step_batch = {"tokens": nxt.unsqueeze(1),
                                  "modality": _modality_of(model, nxt).unsqueeze(1)}
                    logits = model(step_batch)["logits"][:, -1]
    finally:
        model.train(was_training)
    return torch.stack(out, 1)


def _choose(logits, lo, hi, temperature, top_k, generator) -> torch.Tensor:
    allowed = logits[:, lo:hi].float()
    if temperature <= 0:
        return allowed.argmax(-1) + lo
    allowed = allowed / temperature
    if top_k is not None and top_k < allowed.size(-1):
        kth = allowed.topk(top_k, -1).values[:, -1:]
        allowed = allowed.masked_fill(allowed < kth, float("-inf"))
    probs = allowed.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1) + lo


def _modality_of(model: VLAModel, token: torch.Tensor) -> torch.Tensor:
    """Modality index of unified-vocabulary ids (-1 for specials)."""
    out = torch.full_like(token, -1)
    for i, name in enumerate(model.exp.modalities):
        try:
            r = model.exp.vocab_layout().range_of(name)
        except KeyError:
            continue
        out = torch.where((token >= r.offset) & (token < r.offset + r.size), torch.full_like(token, i), out)
    return out
