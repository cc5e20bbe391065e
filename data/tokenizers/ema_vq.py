"""A VQ tokenizer whose codebook is learned by exponential moving averages (van den Oord et al.
2017, appendix A.1; VQ-VAE-2) rather than by gradient, with dead codes re-seeded from the batch.

Per step, with n_i the vectors assigned to code i and s_i their sum:
    N_i <- decay * N_i + (1 - decay) * n_i          (cluster size)
    m_i <- decay * m_i + (1 - decay) * s_i          (sum of assigned vectors)
    e_i  = m_i / N~_i,  N~_i = (N_i + eps) / (N + K eps) * N,  N = sum_i N_i
The Laplace smoothing (eps) keeps a rarely used code's divisor away from zero. The encoder and
decoder learn by gradient on reconstruction + beta * commitment; the codebook gets no gradient.
A code assigned fewer than `dead_code_threshold` vectors over a window of `reseed_every` steps is
moved onto a random encoder output of the current batch (the collapse a gradient codebook falls into).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from vlac.runtime.tokenizers.vq import VectorQuantizer, VQTokenizer, code_statistics, single_thread
from vlac.spec.modalities import ImageVQ


class EMAQuantizer(VectorQuantizer):
    def __init__(self, codebook_size: int, dim: int, beta: float, dead_threshold: float,
                 decay: float = 0.99, eps: float = 1e-5):
        super().__init__(codebook_size, dim, beta, dead_threshold)
        self.decay, self.eps = decay, eps
        self.codebook.weight.requires_grad_(False)
        # N_i = 1 and m_i = e_i at the start, so an unused code stays where it is instead of
        # being divided by a near-zero cluster size
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", self.codebook.weight.detach().clone())

    def forward(self, z: torch.Tensor):
        """z [N, dim] -> (z_q straight-through, codes [N], commitment loss); updates the codebook
        by EMA when training."""
        codes = self.quantize(z.detach())
        q = self.codebook(codes)
        if self.training:
            self.ema_update(z.detach(), codes)
        return z + (q - z).detach(), codes, self.beta * F.mse_loss(z, q.detach())

    @torch.no_grad()
    def ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        k = self.cluster_size.numel()
        onehot = F.one_hot(codes, k).to(z.dtype)  # [N, K]
        counts = onehot.sum(0)
        self.usage += counts
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ z, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + k * self.eps) * total
        self.codebook.weight.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def reseed_dead_codes(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Move every code used fewer than the threshold since the last call onto a random vector
        of z [N, dim] (its EMA statistics restart there); returns the re-seeded code ids."""
        dead = (self.usage < self.dead_threshold).nonzero().squeeze(-1)
        if dead.numel():
            pick = torch.randint(0, z.size(0), (dead.numel(),), generator=generator)
            self.codebook.weight[dead] = z[pick]
            self.embed_sum[dead] = z[pick]
            self.cluster_size[dead] = 1.0
        self.usage.zero_()
        return dead


class EMAVQTokenizer(VQTokenizer):
    """VQTokenizer's encoder-decoder with an EMA codebook; images [B, C, H, W] in [0, 1]."""

    def __init__(self, spec: ImageVQ, hidden: int = 64, decay: float = 0.99, eps: float = 1e-5):
        super().__init__(spec, hidden)
        self.hidden = hidden
        self.quantizer = EMAQuantizer(spec.codebook_size, spec.codebook_dim, spec.commitment_weight,
                                      spec.dead_code_threshold, decay, eps)


@dataclass
class VQProgress:
    step: int
    steps: int
    reconstruction_mse: float  # of this step's batch
    usage: float  # fraction of codes this batch used
    perplexity: float  # exp(entropy of this batch's codes): the effective number of codes
    reseeded: int  # codes re-seeded at this step

    def as_dict(self) -> dict:
        return asdict(self)


def train_ema_vq(spec: ImageVQ, images: np.ndarray, steps: int = 500, batch: int = 128, lr: float = 3e-3,
                 reseed_every: int = 20, decay: float = 0.99, hidden: int = 64, seed: int = 0,
                 on_step: Callable[[VQProgress], None] | None = None) -> tuple[EMAVQTokenizer, dict]:
    """Fit on images [N, C, H, W] in [0, 1]; deterministic for a seed (one thread). Returns the
    tokenizer and its final figures over every image (reconstruction MSE, usage, perplexity)."""
    with single_thread():
        gen = torch.Generator().manual_seed(seed)
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            tok = EMAVQTokenizer(spec, hidden, decay)
        finally:
            torch.random.set_rng_state(state)
        data = torch.as_tensor(images, dtype=torch.float32)
        opt = torch.optim.Adam([p for p in tok.parameters() if p.requires_grad], lr=lr)
        reseeded_total = 0
        for step in range(1, steps + 1):
            x = data[torch.randint(0, data.size(0), (min(batch, data.size(0)),), generator=gen)]
            recon, codes, commit, z = tok(x)
            mse = F.mse_loss(recon, x)
            opt.zero_grad(set_to_none=True)
            (mse + commit).backward()
            opt.step()
            reseeded = 0
            if reseed_every and step % reseed_every == 0 and step < steps:
                reseeded = int(tok.quantizer.reseed_dead_codes(z.detach(), gen).numel())
                reseeded_total += reseeded
            if on_step:
                stats = code_statistics(codes, spec.codebook_size)
                on_step(VQProgress(step, steps, float(mse.detach()), stats["usage"], stats["perplexity"], reseeded))
        tok.eval()
        with torch.no_grad():
            recon, codes, _, _ = tok(data)
            mse = float(F.mse_loss(recon, data))
        stats = code_statistics(codes, spec.codebook_size)
    return tok, {"steps": steps, "images": int(data.size(0)), "reconstruction_mse": mse, "usage": stats["usage"],
                 "perplexity": stats["perplexity"], "entropy": stats["entropy"], "reseeded": reseeded_total}
