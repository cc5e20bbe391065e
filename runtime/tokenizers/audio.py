"""Audio codec tokens: a waveform cut into frames at the codec frame rate, each frame encoded to a
vector and quantised by a residual VQ (codebook j quantises what codebooks < j left over), as in
SoundStream/EnCodec. Token of codebook j with code c is j * codebook_size + c, so the codebooks
own disjoint ranges of the modality's `codebooks * codebook_size` vocabulary; a frame's codes
are laid out codebook-major inside the frame."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlac.spec.modalities import AudioCodec

from .vq import VectorQuantizer


class AudioCodecTokenizer(nn.Module):
    def __init__(self, spec: AudioCodec, sample_rate: int = 8000, dim: int = 32):
        super().__init__()
        self.spec = spec
        self.hop = math.ceil(sample_rate / spec.frame_rate_hz)
        self.frames = math.ceil(spec.frame_rate_hz * spec.seconds)
        self.encoder = nn.Sequential(nn.Linear(self.hop, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.decoder = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, self.hop))
        self.quantizers = nn.ModuleList(VectorQuantizer(spec.codebook_size, dim) for _ in range(spec.codebooks))

    def _frames(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, samples] -> [B, frames, hop] (zero-padded to the codec length)."""
        need = self.frames * self.hop
        wave = F.pad(wave[:, :need], (0, max(0, need - wave.size(1))))
        return wave.view(wave.size(0), self.frames, self.hop)

    def forward(self, wave: torch.Tensor):
        """-> (reconstruction [B, frames*hop], tokens [B, frames*codebooks], vq loss)."""
        z = self.encoder(self._frames(wave))
        residual, total, codes, loss = z.reshape(-1, z.size(-1)), 0.0, [], 0.0
        for q in self.quantizers:
            zq, c, l = q(residual)
            total = total + zq
            residual = residual - zq.detach()
            codes.append(c)
            loss = loss + l
        recon = self.decoder(total.view_as(z)).flatten(1)
        return recon, self._tokens(torch.stack(codes, -1), wave.size(0)), loss

    def _tokens(self, codes: torch.Tensor, b: int) -> torch.Tensor:
        offsets = torch.arange(len(self.quantizers), device=codes.device) * self.spec.codebook_size
        return (codes + offsets).view(b, -1)

    @torch.no_grad()
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        return self(wave)[1]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        b = tokens.size(0)
        codes = tokens.view(b, self.frames, len(self.quantizers)) % self.spec.codebook_size
        total = sum(q.codebook(codes[..., j]) for j, q in enumerate(self.quantizers))
        return self.decoder(total).flatten(1)
