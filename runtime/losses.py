"""Training objectives, shared by the training loop and the compiler's trace.

`Objective` wraps the model and returns the scalar loss plus its parts, so the graph the
compiler lowers includes the loss (the fp32 log-softmax over the vocabulary saves the largest
activation of the step) and the program optimises exactly that graph.

Normalisation: `ar_loss` is a sum over target tokens divided by batch["loss_norm"] (the target
tokens of the whole global batch), so micro-batches and data-parallel ranks add up to the global
mean. Every other term is a mean over this micro-batch and is summed into `aux_loss`: MoE
balancing and z-loss (`moe_aux_loss`), contrastive (`contrastive_loss`), masked generation
(`masked_loss`) and flow matching (`flow_loss`), each already multiplied by its spec weight.
`mtp_loss` (multi-token prediction, runtime/mtp.py) is normalised like `ar_loss` (zero without
losses.mtp). `loss = ar_loss + mtp_loss + aux_loss`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlac.spec import Experiment

from . import noise
from .batch import batch_keys, is_media
from .mtp import mtp_loss


def modality_loss_weights(exp: Experiment) -> torch.Tensor:
    """Per-modality AR weights, indexed like `Experiment.modalities`; zero for a modality trained
    by masked generation or flow matching instead (its inputs are corrupted)."""
    given = exp.losses.ar.modality_weights if exp.losses.ar else {}
    other = {loss.modality for loss in (exp.losses.masked, exp.losses.flow_matching) if loss}
    return torch.tensor([0.0 if m in other else float(given.get(m, 1.0)) for m in exp.modalities])


class Objective(nn.Module):
    """AR next-token loss with per-modality weights plus every auxiliary objective of the spec.

    batch["targets"] [B,S] holds the next token (-100 = no loss at that position);
    batch["target_modality"] [B,S] its modality index; batch["modality"] [B,S] the modality of
    each position; batch["loss_norm"] a scalar (see the module docstring).

    Output: loss, ar_loss, aux_loss, modality_loss_sum [M] and modality_count [M] (unweighted AR
    sums and target counts, for reporting), modality_ar_loss [M] (the weighted, normalised AR
    loss of each modality, differentiable: their sum is ar_loss; per-modality gradient norms and
    clipping use it), moe_aux_loss; with MoE expert_load, dropped_fraction, router_entropy; with
    the respective losses contrastive_loss / contrastive_accuracy / logit_scale, masked_loss /
    masked_accuracy, flow_loss; mtp_loss (zero without losses.mtp) and with it mtp_ce_sum [D] /
    mtp_count [D] (unweighted cross-entropy sums and target counts of each depth, for reporting).
    """

    def __init__(self, model: nn.Module, exp: Experiment):
        super().__init__()
        self.model = model
        self.exp = exp
        self.names = list(exp.modalities)
        self.n_modalities = len(self.names)
        self.ar_weight = exp.losses.ar.weight if exp.losses.ar else 0.0
        self.register_buffer("modality_weight", modality_loss_weights(exp), persistent=False)
        self.packed = any(c.source is not None for c in exp.data.mixture)  # batches carry `document`
        layout = exp.vocab_layout()
        self.mask_id = layout.special("<mask>") if "<mask>" in layout.specials else layout.special("<pad>")

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        losses = self.exp.losses
        result: dict[str, torch.Tensor] = {}
        inputs = batch
        masked = flow = None
        if losses.masked or losses.flow_matching:
            # a new dict from the contract's keys (iterating the batch would not trace)
            self._sample_ids(batch)  # a clear error before the contract's keys are read
            inputs = {k: batch[k] for k in batch_keys(self.exp)}
        if losses.masked:
            inputs, masked = self._mask_tokens(inputs)
        if losses.flow_matching:
            inputs, flow = self._noise_patches(inputs)
        out = self.model(inputs)
        logits = out["logits"]

        targets = batch["targets"]
        valid = targets >= 0
        ce = F.cross_entropy(logits.float().flatten(0, 1), targets.clamp_min(0).flatten(), reduction="none")
        ce = ce.view_as(targets) * valid
        modality = batch["target_modality"].clamp_min(0)
        onehot = F.one_hot(modality, self.n_modalities).to(ce.dtype) * valid.unsqueeze(-1)
        per_mod_sum = (ce.unsqueeze(-1) * onehot).sum((0, 1))
        per_mod_count = onehot.sum((0, 1))
        per_mod_ar = self.ar_weight * self.modality_weight * per_mod_sum / batch["loss_norm"]
        ar = per_mod_ar.sum()
        moe_aux = out["aux_loss"]
        aux = moe_aux
        if masked is not None:
            m_loss, m_acc = self._masked_loss(logits, batch["tokens"], masked)
            aux = aux + losses.masked.weight * m_loss
            result.update(masked_loss=m_loss, masked_accuracy=m_acc)
        if flow is not None:
            f_loss = self._flow_loss(out["hidden"], batch, flow)
            aux = aux + losses.flow_matching.weight * f_loss
            result["flow_loss"] = f_loss
        if losses.contrastive:
            c_loss, c_acc, scale = self._contrastive(out, batch)
            aux = aux + losses.contrastive.weight * c_loss
            result.update(contrastive_loss=c_loss, contrastive_accuracy=c_acc, logit_scale=scale)
        mtp = ar.new_zeros(())
        if losses.mtp:  # the AR targets k positions further on, with the AR loss's modality weights
            mtp, ce_sum, count = mtp_loss(out["mtp_logits"], batch, self.modality_weight, losses.mtp.weight, self.packed)
            result.update(mtp_ce_sum=ce_sum, mtp_count=count)
        result.update({"loss": ar + mtp + aux, "ar_loss": ar, "mtp_loss": mtp, "aux_loss": aux, "moe_aux_loss": moe_aux,
                       "modality_loss_sum": per_mod_sum, "modality_count": per_mod_count,
                       "modality_ar_loss": per_mod_ar})
        for key in ("expert_load", "dropped_fraction", "router_entropy"):
            if key in out:
                result[key] = out[key]
        return result

    @staticmethod
    def _sample_ids(batch) -> torch.Tensor:
        """Global sample indices: the corruption of a sample is a function of (train.seed, its
        index, position) (vlac.runtime.noise), the same in every layout and on every device."""
        try:  # (a traced batch is a Proxy: no membership test, and indexing it never fails)
            return batch["sample"]
        except KeyError:
            raise KeyError("masked / flow-matching losses need batch['sample'] (the global index of each sample, "
                           "int64 [B]); SyntheticData.collate provides it") from None

    # ---- masked generation (MaskGIT / BEiT / Show-o) -----------------------------------------
    def _mask_tokens(self, batch):
        """Replace a random fraction of the masked modality's tokens by <mask>. The fraction is
        drawn per sample uniformly around mask_ratio (mean = mask_ratio), as MaskGIT-style
        training needs every masking level."""
        cfg = self.exp.losses.masked
        idx = self.names.index(cfg.modality)
        tokens = batch["tokens"]
        sample, seed = self._sample_ids(batch), self.exp.train.seed
        is_mod = batch["modality"] == idx
        r = cfg.mask_ratio
        lo, hi = max(0.0, 2 * r - 1), min(1.0, 2 * r)
        ratio = lo + (hi - lo) * noise.uniform(seed, "mask_ratio", sample, tokens[:, :1])
        chosen = (noise.uniform(seed, "mask_choice", sample, tokens) < ratio) & is_mod
        return {**batch, "tokens": torch.where(chosen, torch.full_like(tokens, self.mask_id), tokens)}, chosen

    def _masked_loss(self, logits, tokens, chosen):
        """Cross-entropy of the original token at every masked position (same position, not shifted)."""
        w = chosen.float()
        ce = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(), reduction="none").view_as(w)
        n = w.sum().clamp_min(1.0)
        acc = ((logits.argmax(-1) == tokens).float() * w).sum() / n
        return (ce * w).sum() / n, acc

    # ---- flow matching (Transfusion) ------------------------------------------------------------
    def _noise_patches(self, batch):
        """Rectified flow: x_t = t*x1 + (1-t)*x0 with x0 ~ N(0, I), t ~ U(0, 1) per sample."""
        name = self.exp.losses.flow_matching.modality
        x1 = batch[f"{name}.features"]
        sample, seed = self._sample_ids(batch), self.exp.train.seed
        t = noise.uniform(seed, "flow_time", sample, x1[:, 0, 0]).to(x1.dtype)
        x0 = noise.normal(seed, "flow_noise_u", "flow_noise_v", sample, x1).to(x1.dtype)
        tt = t.view(-1, 1, 1)
        noisy = {**batch, f"{name}.features": tt * x1 + (1 - tt) * x0, f"{name}.flow_time": t}
        return noisy, (x1 - x0)

    def _flow_loss(self, hidden, batch, velocity_target):
        """MSE between the head's velocity at the modality's positions and x1 - x0."""
        name = self.exp.losses.flow_matching.modality
        index, present = batch[f"{name}.index"], batch[f"{name}.present"]
        h = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))
        pred = self.model.flow(h).float()
        err = (pred - velocity_target[..., : pred.size(-1)].float()).pow(2).mean(-1)
        w = present.float()
        return (err * w).sum() / w.sum().clamp_min(1.0)

    # ---- contrastive (CLIP / CoCa) ----------------------------------------------------------------
    def _contrastive(self, out, batch):
        a, b = self.exp.losses.contrastive.pair
        pa, na = self._pooled(out, batch, a)
        pb, nb = self._pooled(out, batch, b)
        return self.model.contrastive(pa, pb, ((na > 0) & (nb > 0)).float())

    def _pooled(self, out, batch, name):
        """Mean final hidden state over the modality's sequence positions (late-fusion media: over
        its encoded entries), with the per-sample count of entries."""
        if is_media(self.exp, name):
            present = batch[f"{name}.present"]
            return out[f"pooled.{name}"], present.sum(-1)
        w = (batch["modality"] == self.names.index(name)).to(out["hidden"].dtype).unsqueeze(-1)
        n = w.sum(1)
        return (out["hidden"] * w).sum(1) / n.clamp_min(1.0), n.squeeze(-1)
