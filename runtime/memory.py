"""Segment-recurrence memory (Transformer-XL style), computed for a whole sequence at once.

With `memory.segment_length` L and `memory.memory_tokens` M, a token of segment s attends
(causally) to its own segment and to the last M positions of segment s-1. Layer l's keys and
values at those memory positions are layer l-1's outputs there, which were themselves computed
with memory of the segment before: the receptive field grows by one segment per layer, exactly
as Transformer-XL's recurrence carries hidden states from segment to segment. Written as an
attention mask it needs no loop over segments, keeps static shapes (traceable, splittable into
pipeline stages), and the KV cache decodes under the same rule (vlac.runtime.model builds the
decode mask from query and key positions). Unlike Transformer-XL, gradients also flow into the
memory positions, since they belong to the same training sequence.
"""

from __future__ import annotations

import torch


def segment_window(q_pos: torch.Tensor, k_pos: torch.Tensor, segment_length: int, memory_tokens: int) -> torch.Tensor:
    """[..., Sq, Sk] True where key k_pos is in the query's segment or among the last `memory_tokens`
    positions of the previous segment (causality is applied separately); positions [..., S] (one
    sequence, or per row of a batch)."""
    q_seg = (q_pos // segment_length).unsqueeze(-1)
    k_seg = (k_pos // segment_length).unsqueeze(-2)
    in_memory = (k_seg == q_seg - 1) & (k_pos.unsqueeze(-2) >= q_seg * segment_length - memory_tokens)
    return (k_seg == q_seg) | in_memory
