"""Training objectives, shared by the training loop and the compiler's trace.

`Objective` wraps the model and returns the scalar loss plus its parts, so the graph the
compiler lowers includes the loss (the fp32 log-softmax over the vocabulary saves the largest
activation of the step) and the program optimises exactly that graph.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlac.spec import Experiment


def modality_loss_weights(exp: Experiment) -> torch.Tensor:
    """Per-modality AR weights, indexed like `Experiment.modalities`."""
    given = exp.losses.ar.modality_weights if exp.losses.ar else {}
    return torch.tensor([float(given.get(m, 1.0)) for m in exp.modalities])


class Objective(nn.Module):
    """AR next-token loss with per-modality weights plus the MoE auxiliary losses.

    batch["targets"] [B,S] holds the next token (-100 = no loss at that position);
    batch["target_modality"] [B,S] its modality index; batch["loss_norm"] a scalar, the number
    of target tokens in the whole global batch, so micro-batches and data-parallel ranks sum to
    exactly the global mean however the batch is split.
    """

    def __init__(self, model: nn.Module, exp: Experiment):
        super().__init__()
        self.model = model
        self.n_modalities = len(exp.modalities)
        self.ar_weight = exp.losses.ar.weight if exp.losses.ar else 0.0
        self.register_buffer("modality_weight", modality_loss_weights(exp), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(batch)
        logits = out["logits"]
        targets = batch["targets"]
        valid = targets >= 0
        ce = F.cross_entropy(logits.float().flatten(0, 1), targets.clamp_min(0).flatten(), reduction="none")
        ce = ce.view_as(targets) * valid
        modality = batch["target_modality"].clamp_min(0)
        weight = self.modality_weight[modality] * valid
        # per-modality sums of the unweighted loss and token counts, for reporting
        onehot = F.one_hot(modality, self.n_modalities).to(ce.dtype) * valid.unsqueeze(-1)
        per_mod_sum = (ce.unsqueeze(-1) * onehot).sum((0, 1))
        per_mod_count = onehot.sum((0, 1))
        ar = self.ar_weight * (ce * weight).sum() / batch["loss_norm"]
        loss = ar + out["aux_loss"]
        result = {"loss": loss, "ar_loss": ar, "aux_loss": out["aux_loss"],
                  "modality_loss_sum": per_mod_sum, "modality_count": per_mod_count}
        for key in ("expert_load", "dropped_fraction"):
            if key in out:
                result[key] = out[key]
        return result
