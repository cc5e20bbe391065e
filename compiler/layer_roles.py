"""What each decoder layer of an experiment is, and the smallest depth that shows every kind of
layer a deeper model needs: the one notion of a layer's *role* that deriving graphs by depth
(vlac.compiler.graph_cache) and the search's closed-form costs (vlac.search.fast_costs) share.

A layer's role is (the kind of the layer before it or None for the first, its own kind, and
whether it is the last where the FP8 edge policy is on). Two layers of one role cost the same
in a lowered graph: the top-level code between two layers (accumulating MoE losses, say) is
charged to the layer after it, an input shared by every layer (the attention mask) to the
first one, and the FP8 edge policy (precision.fp8.keep_first_last_bf16) keeps the first and the
last in BF16. The head's group follows the last layer's kind. A graph lowered with the edge
policy off (the graph cache's references, which re-apply it per layer) has no last role.
"""

from __future__ import annotations

from typing import Any

from vlac.spec import Experiment

Role = tuple  # (kind of the previous layer or None, kind of this layer, last under the edge policy)


def layer_kinds(exp: Experiment) -> tuple[str, ...]:
    """What each decoder layer is, read from the spec the way runtime/model.py builds it: dense or
    MoE, "+window" for a sliding-window layer (its attention costs its window's pairs) and
    "+chunk" for a chunked one (its chunks' pairs)."""
    moe = set(exp.moe.moe_layer_indices(exp.backbone.layers)) if exp.moe else set()
    window, chunk = set(exp.backbone.window_layers()), set(exp.backbone.chunk_layers())
    return tuple(("moe" if i in moe else "dense") + ("+window" if i in window else "") + ("+chunk" if i in chunk else "")
                 for i in range(exp.backbone.layers))


def roles(kinds: tuple[str, ...], edges: bool) -> list[Role]:
    """Each layer's role; `edges`: whether the graph was lowered with the FP8 edge policy on."""
    last = len(kinds) - 1
    return [(kinds[i - 1] if i else None, k, edges and i == last) for i, k in enumerate(kinds)]


def edge_policy(exp: Experiment) -> bool:
    return exp.precision.fp8.keep_first_last_bf16


def reference_depth(exp: Experiment, edges: bool) -> int:
    """The smallest depth (at most the experiment's own) whose layers show every role of the
    experiment's layers, with the same last layer kind (the head's group follows it)."""
    kinds = layer_kinds(exp)
    need = set(roles(kinds, edges))
    layers = exp.backbone.layers
    for d in range(1, layers):
        shallow = layer_kinds(with_depth(exp, d))
        if shallow[-1] == kinds[-1] and set(roles(shallow, edges)) >= need:
            return d
    return layers


def with_depth(exp: Experiment, depth: int, keep_edges_bf16: bool | None = None) -> Experiment:
    """The same experiment with another depth (and FP8 edge policy); the sections are copied
    from the validated experiment, only the changed fields differ."""
    update: dict[str, Any] = {"backbone": exp.backbone.model_copy(update={"layers": depth})}
    if keep_edges_bf16 is not None:
        fp8 = exp.precision.fp8.model_copy(update={"keep_first_last_bf16": keep_edges_bf16})
        update["precision"] = exp.precision.model_copy(update={"fp8": fp8})
    return exp.model_copy(update=update)


__all__ = ["Role", "edge_policy", "layer_kinds", "reference_depth", "roles", "with_depth"]
