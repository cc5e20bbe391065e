"""Training diagnostics beyond the loss: per-modality gradient norms (and per-modality clipping),
MoE load statistics, VQ codebook health, a modality-reliance probe and a pose sanity check.

The per-step scalars come from the Objective's output (see vlac.runtime.losses); the functions
here turn it into metrics or run the extra forward/backward passes a probe needs.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn

from vlac.spec import Experiment

from .tokenizers.vq import code_statistics


def loss_terms(out: dict[str, torch.Tensor], exp: Experiment) -> dict[str, torch.Tensor]:
    """The differentiable terms whose sum is out["loss"]: one AR term per modality (weighted and
    normalised as in the loss) and one per auxiliary objective (already weighted)."""
    terms = {f"ar.{name}": out["modality_ar_loss"][i] for i, name in enumerate(exp.modalities)}
    weights = {"masked_loss": exp.losses.masked, "flow_loss": exp.losses.flow_matching,
               "contrastive_loss": exp.losses.contrastive}
    for key, cfg in weights.items():
        if key in out:
            terms[key.removesuffix("_loss")] = out[key] * cfg.weight
    if "mtp_ce_sum" in out:  # multi-token prediction: normalised like the AR terms (runtime/mtp.py)
        terms["mtp"] = out["mtp_loss"]
    terms["moe"] = out["moe_aux_loss"]
    return {k: v for k, v in terms.items() if v.requires_grad}


def per_term_grad_norms(out: dict[str, torch.Tensor], exp: Experiment, params: Iterable[nn.Parameter]) -> dict[str, float]:
    """Gradient norm of each loss term alone (one extra backward per term, graph retained):
    shows which modality dominates the update."""
    params = [p for p in params if p.requires_grad]
    norms = {}
    for name, term in loss_terms(out, exp).items():
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        norms[name] = _norm(grads)
    return norms


def per_term_clipped_backward(out: dict[str, torch.Tensor], exp: Experiment, params: Iterable[nn.Parameter],
                              max_norm: float) -> dict[str, float]:
    """`optimizer.per_modality_clip`: clip each term's gradient to `max_norm` on its own, then
    accumulate the clipped gradients into .grad, so one modality's spike cannot swamp the others.
    Returns each term's norm before clipping."""
    params = [p for p in params if p.requires_grad]
    norms = {}
    terms = loss_terms(out, exp)
    for i, (name, term) in enumerate(terms.items()):
        grads = torch.autograd.grad(term, params, retain_graph=i + 1 < len(terms), allow_unused=True)
        norm = _norm(grads)
        norms[name] = norm
        scale = min(1.0, max_norm / (norm + 1e-6))
        for p, g in zip(params, grads):
            if g is None:
                continue
            p.grad = g * scale if p.grad is None else p.grad + g * scale
    return norms


def _norm(grads) -> float:
    sq = [g.detach().float().pow(2).sum() for g in grads if g is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


def moe_metrics(out: dict[str, torch.Tensor]) -> dict[str, object]:
    """Expert load histogram (fraction of assignments per expert, per MoE layer), its imbalance
    (max / mean load: 1 when uniform), router entropy (nats) and dropped-token fraction."""
    if "expert_load" not in out:
        return {}
    load = out["expert_load"].detach().float()
    frac = load / load.sum(-1, keepdim=True).clamp_min(1.0)
    return {"expert_load_fraction": frac.tolist(),
            "load_imbalance": (load.max(-1).values / load.mean(-1).clamp_min(1e-9)).tolist(),
            "router_entropy": out["router_entropy"].detach().tolist(),
            "dropped_fraction": float(out["dropped_fraction"].detach().mean())}


def codebook_metrics(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Usage, entropy and perplexity of the codes seen (see tokenizers.vq.code_statistics)."""
    stats = code_statistics(codes, codebook_size)
    stats["entropy_fraction"] = stats["entropy"] / math.log(codebook_size)
    return stats


# ---- probes ---------------------------------------------------------------------------------------

@torch.no_grad()
def answer_accuracy(model: nn.Module, batch: dict[str, torch.Tensor], answer_mask: torch.Tensor) -> float:
    """Teacher-forced accuracy of the next-token predictions at the positions of answer_mask
    [B, S] (True where the target is an answer token)."""
    logits = model(batch)["logits"]
    pred = logits.argmax(-1)
    hit = (pred == batch["targets"]) & answer_mask
    return float(hit.sum() / answer_mask.sum().clamp_min(1))


def swap_modality(batch: dict[str, torch.Tensor], exp: Experiment, name: str, shift: int = 1) -> dict[str, torch.Tensor]:
    """The batch with modality `name`'s content rolled by `shift` samples (each sample gets
    another's image): tokens at its sequence positions and its per-modality entries. Samples must
    share the layout (same mixture component)."""
    out = dict(batch)
    idx = list(exp.modalities).index(name)
    at = batch["modality"] == idx
    out["tokens"] = torch.where(at, batch["tokens"].roll(shift, 0), batch["tokens"])
    for key in batch:
        if key.startswith(name + ".") and not key.endswith((".index", ".present")):
            out[key] = batch[key].roll(shift, 0)
    return out


def modality_reliance(model: nn.Module, batch: dict[str, torch.Tensor], exp: Experiment, name: str,
                      answer_mask: torch.Tensor, shift: int = 1) -> dict[str, float]:
    """Answer accuracy with the true `name` input and with another sample's: a model that uses
    the modality loses accuracy when it is swapped; one that ignores it does not."""
    true = answer_accuracy(model, batch, answer_mask)
    swapped = answer_accuracy(model, swap_modality(batch, exp, name, shift), answer_mask)
    return {"accuracy": true, "accuracy_swapped": swapped, "reliance": true - swapped}


@torch.no_grad()
def pose_sensitivity(model: nn.Module, batch: dict[str, torch.Tensor], name: str, angle: float = 0.5) -> float:
    """Relative change of the final hidden states at video modality `name`'s positions when every
    camera is rotated by `angle` radians about the vertical axis (same frames, different pose).
    Zero means the model cannot tell where a camera looks."""
    key = f"{name}.pose"
    pose = batch[key]
    c, s = math.cos(angle), math.sin(angle)
    rot = pose.new_tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    m = pose.view(*pose.shape[:-1], 3, 4)
    moved = torch.cat([rot @ m[..., :3], rot @ m[..., 3:]], -1).reshape(pose.shape)
    h0 = model(batch)["hidden"]
    h1 = model({**batch, key: moved})["hidden"]
    idx = batch[f"{name}.index"].unsqueeze(-1).expand(-1, -1, h0.size(-1))
    a, b = h0.gather(1, idx), h1.gather(1, idx)
    return float((b - a).norm() / a.norm().clamp_min(1e-9))
