"""VQ image tokenizer (VQ-VAE): a patch encoder, a codebook with the straight-through estimator
and commitment loss, dead-code resampling, and a decoder for reconstructions.

Loss per vector z with nearest code e:  ||sg(z) - e||^2 + beta * ||z - sg(e)||^2 (codebook +
commitment), and the decoder sees z + sg(e - z), so the reconstruction gradient reaches the
encoder unchanged (straight-through). A code used fewer than `dead_code_threshold` times since
the last resampling is dead: it is moved onto a random encoder output of the current batch, so
every code keeps receiving gradient.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vlac.spec.modalities import ImageVQ


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, dead_threshold: float = 1.0):
        super().__init__()
        self.beta, self.dead_threshold = beta, dead_threshold
        self.codebook = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("usage", torch.zeros(codebook_size))  # assignments since the last resampling

    def forward(self, z: torch.Tensor):
        """z [N, dim] -> (z_q straight-through [N, dim], codes [N], loss scalar)."""
        codes = self.quantize(z)
        q = self.codebook(codes)
        loss = F.mse_loss(q, z.detach()) + self.beta * F.mse_loss(z, q.detach())
        if self.training:
            self.usage += torch.bincount(codes, minlength=self.usage.numel()).to(self.usage.dtype)
        return z + (q - z).detach(), codes, loss

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        w = self.codebook.weight
        dist = z.pow(2).sum(-1, keepdim=True) - 2 * z @ w.t() + w.pow(2).sum(-1)
        return dist.argmin(-1)

    @torch.no_grad()
    def resample_dead_codes(self, z: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Move every dead code onto a random vector of z [N, dim]; reset the usage window.
        Returns how many codes were resampled."""
        dead = (self.usage < self.dead_threshold).nonzero().squeeze(-1)
        if dead.numel():
            pick = torch.randint(0, z.size(0), (dead.numel(),), generator=generator, device=z.device)
            self.codebook.weight[dead] = z[pick].to(self.codebook.weight.dtype)
        self.usage.zero_()
        return int(dead.numel())


def code_statistics(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Usage (fraction of codes used at least once) and entropy (nats; log K when uniform) of a
    batch of code ids; perplexity = exp(entropy) is the effective number of codes."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    p = counts / counts.sum().clamp_min(1.0)
    entropy = float(-(p * p.clamp_min(1e-12).log()).sum())
    return {"usage": float((counts > 0).float().mean()), "entropy": entropy, "perplexity": float(np.exp(entropy))}


class VQTokenizer(nn.Module):
    """Images [B, C, H, W] in [0, 1] <-> codes [B, (H/p)*(W/p)] (row-major patches)."""

    def __init__(self, spec: ImageVQ, hidden: int = 64):
        super().__init__()
        self.spec = spec
        p, c, d = spec.patch_size, spec.channels, spec.codebook_dim
        self.grid = spec.image_size // p
        self.encoder = nn.Sequential(nn.Conv2d(c, hidden, p, stride=p), nn.GELU(), nn.Conv2d(hidden, d, 1))
        self.quantizer = VectorQuantizer(spec.codebook_size, d, spec.commitment_weight, spec.dead_code_threshold)
        self.decoder = nn.Sequential(nn.Conv2d(d, hidden, 1), nn.GELU(), nn.ConvTranspose2d(hidden, c, p, stride=p))

    def _vectors(self, images: torch.Tensor) -> torch.Tensor:
        z = self.encoder(images)  # [B, d, g, g]
        return z.permute(0, 2, 3, 1).reshape(-1, z.size(1))

    def _image(self, vectors: torch.Tensor, batch: int) -> torch.Tensor:
        z = vectors.view(batch, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        return self.decoder(z)

    def forward(self, images: torch.Tensor):
        """-> (reconstruction, codes [B, n], vq loss, the pre-quantisation vectors [B*n, d])."""
        z = self._vectors(images)
        zq, codes, vq_loss = self.quantizer(z)
        return self._image(zq, images.size(0)), codes.view(images.size(0), -1), vq_loss, z

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantizer.quantize(self._vectors(images)).view(images.size(0), -1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self._image(self.quantizer.codebook(codes.flatten()), codes.size(0)).clamp(0, 1)


@dataclass
class VQReport:
    steps: int
    reconstruction_mse: float
    usage: float
    entropy: float
    perplexity: float
    resampled: list[tuple[int, int]]  # (step, codes resampled) for every resampling event


@contextlib.contextmanager
def single_thread():
    """One intra-op thread: float reductions then run in one fixed order, so every process that
    fits the same tokenizer gets bit-identical codes (data-parallel ranks must agree)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_vq(spec: ImageVQ, images: np.ndarray, steps: int = 300, batch: int = 128, lr: float = 3e-3,
             resample_every: int = 50, seed: int = 0) -> tuple[VQTokenizer, VQReport]:
    """Fit a VQ tokenizer on images [N, C, H, W] in [0, 1]; deterministic for a seed."""
    with single_thread():
        gen = torch.Generator().manual_seed(seed)
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            tok = VQTokenizer(spec)
        finally:
            torch.random.set_rng_state(state)
        data = torch.as_tensor(images, dtype=torch.float32)
        opt = torch.optim.Adam(tok.parameters(), lr=lr)
        events = []
        for step in range(steps):
            x = data[torch.randint(0, data.size(0), (min(batch, data.size(0)),), generator=gen)]
            recon, _, vq_loss, z = tok(x)
            loss = F.mse_loss(recon, x) + vq_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if resample_every and (step + 1) % resample_every == 0 and step + 1 < steps:
                n = tok.quantizer.resample_dead_codes(z.detach(), gen)
                if n:
                    events.append((step + 1, n))
        tok.eval()
        with torch.no_grad():
            recon, codes, _, _ = tok(data)
            mse = float(F.mse_loss(recon, data))
        stats = code_statistics(codes, spec.codebook_size)
    return tok, VQReport(steps, mse, stats["usage"], stats["entropy"], stats["perplexity"], events)
