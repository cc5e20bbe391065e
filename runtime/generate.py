"""Generation with a KV cache: prefill the prompt once, then decode one token per step, greedy or
sampled (temperature, top-k), restricted to one modality's range of the unified vocabulary.

The cache is preallocated from `kv_cache` settings ([B, kv_heads, max_length, head_dim] per
layer, in the spec's cache dtype on GPUs, fp32 on CPU; an "fp8" setting is stored as bf16 here,
since reading an fp8 cache needs scaled attention kernels this runtime does not have). MoE layers
route dropless while decoding: capacity is a training-time device, and a one-token step must not
drop its own token. Late fusion encodes the media once, at the prefill, and reuses them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from vlac.spec import Experiment

from .model import VLAModel
from .moe import MoELayer

CACHE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class LayerCache:
    """Keys and values of one attention layer, [B, H_kv, max_length, D] each."""

    def __init__(self, owner: "KVCache", k: torch.Tensor, v: torch.Tensor):
        self.owner, self.k, self.v = owner, k, v

    @property
    def length(self) -> int:
        return self.owner.length

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.size(2)
        if end > self.k.size(2):
            raise ValueError(f"KV cache overflow: {end} positions exceed kv_cache.max_length {self.k.size(2)}; "
                             f"raise kv_cache.max_length or generate fewer tokens")
        self.k[:, :, start:end] = k.to(self.k.dtype)
        self.v[:, :, start:end] = v.to(self.v.dtype)
        return self.k[:, :, :end].to(k.dtype), self.v[:, :, :end].to(v.dtype)

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


def make_cache(model: VLAModel, batch_size: int, max_length: int | None = None,
               dtype: torch.dtype | None = None) -> KVCache:
    exp: Experiment = model.exp
    bb = exp.backbone
    length = max_length or exp.kv_cache.max_length or bb.context_length
    dev = model.embed.weight.device
    if dtype is None:
        dtype = torch.float32 if dev.type == "cpu" else CACHE_DTYPES.get(exp.kv_cache.dtype, torch.bfloat16)
    cache = KVCache()
    for _ in model.layers:
        shape = (batch_size, bb.n_kv_heads, length, bb.d_head)
        cache.layers.append(LayerCache(cache, torch.zeros(shape, dtype=dtype, device=dev),
                                       torch.zeros(shape, dtype=dtype, device=dev)))
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
