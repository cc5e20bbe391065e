"""Which parameters a run trains: `freeze: true` per component.

A frozen component keeps its weights (pretrained or initialised) for the whole run: its
parameters have requires_grad off, so autograd computes no weight gradient for them, the data-
parallel wrappers reduce nothing for them and the optimiser (runtime/optim.py) holds no state for
them. Gradients still flow through a frozen component to the trainable ones upstream (LLaVA's
first stage: a frozen decoder passes gradients back to the vision projector).

Components and the spec field that freezes each:

  backbone.freeze (or late fusion's fusion.freeze_lm)   embedding, positions, blocks, final norm, head
  modalities.<continuous>.freeze                         that modality's projector or resampler
  modalities.<continuous>.encoder.freeze                 its pretrained vision tower (default true, as LLaVA)
  modalities.<video>.freeze                              its spatio-temporal encoder, pose/time embeddings

Freezing happens when the model is built, before parallelisation, so every layout (plan dicts
applied from outside the model) sees the same requires_grad flags.
"""

from __future__ import annotations

import torch.nn as nn

from vlac.spec import Experiment

from .encoders import TowerProjector


def frozen_fields(exp: Experiment) -> list[str]:
    """The spec fields that freeze a component, in spec order."""
    fields = ["backbone.freeze"] if exp.backbone.freeze else []
    fields += ["fusion.freeze_lm"] if exp.fusion.mode == "late" and exp.fusion.freeze_lm else []
    fields += [f"modalities.{n}.freeze" for n, m in exp.modalities.items() if getattr(m, "freeze", False)]
    return fields + [f"modalities.{n}.encoder.freeze" for n, m in exp.modalities.items()
                     if m.kind == "continuous" and m.encoder is not None and m.encoder.freeze]


def frozen_components(model: nn.Module, exp: Experiment) -> dict[str, list[nn.Module]]:
    """Spec field that freezes a component -> the modules it covers."""
    parts: dict[str, list[nn.Module]] = {}
    for field in frozen_fields(exp):
        if field.startswith("modalities."):
            name = field.split(".")[1]
            found = [group[name] for group in (model.projectors, model.video) if name in group]
            if found and isinstance(found[0], TowerProjector):  # the tower and the projector freeze apart
                found = [found[0].tower if field.endswith(".encoder.freeze") else found[0].projector]
            parts[field] = found
        else:  # the language model
            parts[field] = [m for m in (model.embed, model.pos_embed, model.layers, model.norm, model.head) if m is not None]
    return parts


def freeze(model: nn.Module, exp: Experiment) -> None:
    """Turn requires_grad off for every parameter of the components the spec freezes."""
    for modules in frozen_components(model, exp).values():
        for module in modules:
            module.requires_grad_(False)
