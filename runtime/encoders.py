"""Embedders of non-text signals: continuous projectors, camera-pose and timestamp embeddings,
and the asymmetric spatio-temporal video encoder.

Camera pose is the flattened 3x4 extrinsic matrix [R | t] of each camera (POSE_DIM = 12 numbers),
given per sample in batch[f"{video}.pose"] [B, cameras, 12].
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from vlac.spec.architecture import Backbone
from vlac.spec.modalities import Embedding, VideoVQ

from .layers import MLP, Attention, make_norm, sub_backbone

POSE_DIM = 12


class Projector(nn.Module):
    """Continuous signal -> model width: linear, or a 2-layer GELU MLP (LLaVA-1.5 style)."""

    def __init__(self, input_dim: int, hidden: int, kind: str, inner: int | None = None):
        super().__init__()
        if kind == "linear":
            self.net = nn.Linear(input_dim, hidden)
        else:
            self.net = nn.Sequential(nn.Linear(input_dim, inner or hidden), nn.GELU(), nn.Linear(inner or hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TowerProjector(nn.Module):
    """Pixels -> a pretrained vision tower's hidden states at `layer` -> the projector (LLaVA: CLIP's
    penultimate layer without the class token through a 2-layer MLP). The tower keeps all its
    weights, so a run exports it whole, but parameters its features never reach (layers past
    `layer`, the pooled output's norm and head) have requires_grad off: they get no gradient
    anyway, and the optimiser, the data-parallel reducers and the compiler then skip them.
    `forward(pixels, *rest)`: `rest` goes to the projector (a resampler's presence mask)."""

    def __init__(self, tower: nn.Module, projector: nn.Module, layer: int, drop_class_token: bool):
        super().__init__()
        self.tower, self.projector = tower, projector
        self.layer, self.drop_class_token = layer % len(tower.layers), drop_class_token
        for module in tower.unreached(self.layer):
            module.requires_grad_(False)

    def forward(self, pixels: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return self.projector(self.tower.features(pixels, self.layer, self.drop_class_token), *rest)


class FourierFeatures(nn.Module):
    """x [..., n] -> [x, sin(2^j pi x), cos(2^j pi x)] for j < num_frequencies (NeRF-style)."""

    def __init__(self, num_frequencies: int):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(num_frequencies, dtype=torch.float32),
                             persistent=False)

    @staticmethod
    def out_dim(n: int, num_frequencies: int) -> int:
        return n * (1 + 2 * num_frequencies)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ang = (x.unsqueeze(-1) * self.freqs.to(x.dtype)).flatten(-2)
        return torch.cat([x, ang.sin(), ang.cos()], dim=-1)


class VisualPositionEmbedding(nn.Module):
    """Camera-pose + timestamp embedding for every token of a video span (width `width`).

    Token j of a span lies in camera j // (T' * P) at time step (j // P) % T' (T' = frames /
    temporal_patch code steps, P codes per frame); those ids are static buffers. Pose: Fourier
    features of the camera's extrinsics through a linear layer, or (learned) a per-camera table
    plus a linear map of the raw pose. Time: Fourier features of the normalised timestamp, or a
    learned table per time step.
    """

    def __init__(self, spec: VideoVQ, width: int):
        super().__init__()
        per_frame = (spec.image_size // spec.patch_size) ** 2
        steps = spec.frames // spec.temporal_patch
        j = torch.arange(spec.tokens)
        self.register_buffer("camera_id", j // (steps * per_frame), persistent=False)
        self.register_buffer("time_id", (j // per_frame) % steps, persistent=False)
        seconds = spec.frames / spec.fps
        stamp = (torch.arange(steps, dtype=torch.float32) * spec.temporal_patch / spec.fps) / seconds
        self.register_buffer("stamp", stamp, persistent=False)
        self.pose_kind, self.time_kind = spec.pose_embedding.kind, spec.time_embedding.kind
        self.pose = _pose_embedder(spec.pose_embedding, spec.cameras, width)
        self.time = _time_embedder(spec.time_embedding, steps, width)

    def forward(self, pose: torch.Tensor | None) -> torch.Tensor:
        """pose [B, cameras, 12] -> [B, tokens, width] (zeros for kind none)."""
        out = 0.0
        if self.pose_kind == "fourier":
            out = self.pose["proj"](self.pose["fourier"](pose))[:, self.camera_id]
        elif self.pose_kind == "learned":
            out = (self.pose["proj"](pose) + self.pose["table"].weight)[:, self.camera_id]
        if self.time_kind == "fourier":
            out = out + self.time["proj"](self.time["fourier"](self.stamp.unsqueeze(-1)))[self.time_id]
        elif self.time_kind == "learned":
            out = out + self.time["table"].weight[self.time_id]
        return out


def _pose_embedder(e: Embedding, cameras: int, width: int) -> nn.ModuleDict:
    if e.kind == "fourier":
        return nn.ModuleDict({"fourier": FourierFeatures(e.num_frequencies),
                              "proj": nn.Linear(FourierFeatures.out_dim(POSE_DIM, e.num_frequencies), width)})
    if e.kind == "learned":
        return nn.ModuleDict({"table": nn.Embedding(cameras, width), "proj": nn.Linear(POSE_DIM, width)})
    return nn.ModuleDict()


def _time_embedder(e: Embedding, steps: int, width: int) -> nn.ModuleDict:
    if e.kind == "fourier":
        return nn.ModuleDict({"fourier": FourierFeatures(e.num_frequencies),
                              "proj": nn.Linear(FourierFeatures.out_dim(1, e.num_frequencies), width)})
    if e.kind == "learned":
        return nn.ModuleDict({"table": nn.Embedding(steps, width)})
    return nn.ModuleDict()


class EncoderLayer(nn.Module):
    """Pre-norm bidirectional transformer layer (auxiliary encoders; not a decoder `Block`, so
    the compiler's per-block analysis and the pipeline split see only the backbone)."""

    def __init__(self, cfg: Backbone):
        super().__init__()
        self.attn_norm = make_norm(cfg, cfg.hidden)
        self.attn = Attention(cfg, causal=False)
        self.mlp_norm = make_norm(cfg, cfg.hidden)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class SpatioTemporalEncoder(nn.Module):
    """Asymmetric video encoder: a small per-frame encoder shared by every camera and time step
    (attention within one frame's P codes), then a larger aggregator across all cameras and time
    steps, with pose and timestamp embeddings added to every token at the aggregator's input.
    Input: the code embeddings of a video span [B, n, hidden]; output [B, n, hidden]."""

    def __init__(self, spec: VideoVQ, bb: Backbone):
        super().__init__()
        enc = spec.encoder
        self.per_frame = (spec.image_size // spec.patch_size) ** 2
        frame_cfg = sub_backbone(bb, enc.frame_hidden)
        agg_cfg = sub_backbone(bb, enc.aggregator_hidden)
        self.frame_in = nn.Linear(bb.hidden, enc.frame_hidden)
        self.frame_layers = nn.ModuleList(EncoderLayer(frame_cfg) for _ in range(enc.frame_layers))
        self.frame_out = nn.Linear(enc.frame_hidden, enc.aggregator_hidden)
        self.position = VisualPositionEmbedding(spec, enc.aggregator_hidden)
        self.aggregator = nn.ModuleList(EncoderLayer(agg_cfg) for _ in range(enc.aggregator_layers))
        self.norm = make_norm(agg_cfg, enc.aggregator_hidden)
        self.out = nn.Linear(enc.aggregator_hidden, bb.hidden)

    def forward(self, codes: torch.Tensor, pose: torch.Tensor | None) -> torch.Tensor:
        b, n = codes.size(0), codes.size(1)
        h = self.frame_in(codes).reshape(-1, self.per_frame, self.frame_in.out_features)  # [B*frames, P, fh]
        for layer in self.frame_layers:
            h = layer(h)
        h = self.frame_out(h).reshape(b, n, -1) + self.position(pose)
        for layer in self.aggregator:
            h = layer(h)
        return self.out(self.norm(h))
