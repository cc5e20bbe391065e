"""The FX tracer and its explicit leaf policy.

Leaves are the modules whose cost is one well-known op (linear, embedding, norm, dropout,
activation): keeping them whole makes each a single node that the cost rules recognise.
Decoder blocks are leaves of the model-level trace and traced on their own, once per distinct
block signature, so a 100-layer model costs as much to analyse as a 2-layer one.
"""

from __future__ import annotations

import torch.nn as nn
import torch.fx as fx

from vlac.runtime.layers import RMSNorm
from vlac.runtime.model import Block

LEAF_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Embedding, nn.LayerNorm, RMSNorm, nn.Dropout, nn.GELU, nn.SiLU, nn.Identity,
)


class VlacTracer(fx.Tracer):
    def __init__(self, blocks_as_leaves: bool):
        super().__init__()
        self.blocks_as_leaves = blocks_as_leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, LEAF_TYPES):
            return True
        if self.blocks_as_leaves and isinstance(m, Block):
            return True
        return False


def trace(root: nn.Module, blocks_as_leaves: bool) -> fx.GraphModule:
    tracer = VlacTracer(blocks_as_leaves)
    graph = tracer.trace(root)
    return fx.GraphModule(tracer.root, graph, root.__class__.__name__)


def block_signature(block: Block) -> str:
    """Blocks with equal signatures have identical graphs and costs."""
    return "moe" if block.is_moe else "dense"
