"""Counter-based random numbers for training-time corruption (masked tokens, flow-matching noise).

A number is a hash of (seed, stream, sample, position), not a draw from a generator's state, so
it does not depend on which process computes it, in what order, on which device, or how the batch
is split: one process, any data/pipeline/context-parallel layout, a resumed run and the last
pipeline stage recomputing the first stage's corruption all see the same numbers. The hash is
SplitMix64 (Steele et al., 2014) in int64 tensor arithmetic (multiplication wraps modulo 2^64 as
the algorithm needs; right shifts are made logical by masking), which also keeps it traceable by
torch.fx and costed like any elementwise op.
"""

from __future__ import annotations

import math

import torch

_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # as signed int64
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)

# one stream per use, so that two corruptions of one sample are independent
STREAMS = {"mask_ratio": 1, "mask_choice": 2, "flow_time": 3, "flow_noise_u": 4, "flow_noise_v": 5}


def _shr(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> sign-extends)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(z: torch.Tensor) -> torch.Tensor:
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def _counters(seed: int, stream: str, sample: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """int64 shaped like `like` [B, ...]: a distinct counter per (seed, stream, sample, position).
    Sizes come from `like`, never from Python ints, so symbolic tracing records them."""
    if stream not in STREAMS:
        raise ValueError(f"noise stream {stream!r}; choose one of {', '.join(STREAMS)}")
    position = torch.ones_like(like, dtype=torch.long).reshape(like.size(0), -1).cumsum(1) - 1  # [B, n]
    key = _splitmix64(_splitmix64(sample.long() * 8 + STREAMS[stream]) ^ seed)  # [B]
    return (key.unsqueeze(-1) ^ _splitmix64(position)).view_as(like)


def uniform(seed: int, stream: str, sample: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """float32 shaped like `like` ([B, ...], B = len(sample)) in [0, 1), 24 random bits each
    (float32's mantissa)."""
    bits = _shr(_splitmix64(_counters(seed, stream, sample, like)), 40)
    return bits.float() * (1.0 / (1 << 24))


def normal(seed: int, stream_u: str, stream_v: str, sample: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """float32 shaped like `like`, standard normal (Box-Muller over two uniform streams)."""
    u = 1.0 - uniform(seed, stream_u, sample, like)  # (0, 1]: log is finite
    v = uniform(seed, stream_v, sample, like)
    return torch.sqrt(-2.0 * torch.log(u)) * torch.cos(2.0 * math.pi * v)
