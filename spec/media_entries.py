"""Late fusion's media entries: the modalities that gated cross-attention reads instead of the
token sequence, and how many entries each gives per sequence. The planner sizes the media that
pipeline stages send on from these counts and the runtime lays out its media masks by them, so
both read this one rule. Plain Python over a validated Experiment (no torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .experiment import Experiment


def media_entry_counts(exp: Experiment) -> dict[str, int]:
    """Each media modality of late fusion, in the spec's order, -> its entries [M_m] per sequence:
    a continuous modality's positions after projection (its resampler's queries, else one per
    input vector), an image or video modality's tokens. Empty unless fusion.mode is late."""
    context = exp.context_modalities()
    return {name: m.positions if m.kind == "continuous" else m.tokens
            for name, m in exp.modalities.items() if name in context}
