"""Which ranks route an MoE layer's tokens: the one rule vlac's cost model (layer_times.py) and its
runtime (runtime/parallel/moe_local_routing.py, context_parallel.py, support.py) share.

Dropless routing (moe.capacity_factor: null) sends each token copy to its expert whatever the
other tokens do, so a rank may route only the tokens it holds and still give one process's
outputs. vlac's runtime does so wherever the tokens are already split between ranks:

  cp  each context-parallel rank holds its own chunks of the sequence;
  tp  under sequence parallelism each tensor-parallel rank holds its own sequence shard (without
      it every tp rank holds the whole sequence and runs the layer on it, replicated).

Both need whole experts on every rank (etp = 1): split by width (etp = tp), the experts need
every token of the tp group. A layer with a capacity gathers the whole micro-batch first, since
which copies are dropped depends on the tokens ahead of each one in the micro-batch.

Pure and elementwise (&, *, ==): the arguments may be scalars (one plan) or numpy arrays (many
candidate layouts). The runtime imports this module, so it must stay free of torch and numpy.
"""

from __future__ import annotations


def routes_own_tokens(dropless, etp):
    """Whether an MoE layer routes the tokens its rank holds instead of gathering the micro-batch."""
    return dropless & (etp == 1)


def token_shards(dropless, etp, tp, sp, cp):
    """(tp shards, cp shards): how many ranks of the tensor- and of the context-parallel group split
    one micro-batch of the layer, each routing its own share; 1 where the layer is gathered (or
    replicated) over that group. A rank routes mb / (tp shards * cp shards) sequences' tokens."""
    own = routes_own_tokens(dropless, etp)
    return 1 + (own & sp) * (tp - 1), 1 + own * (cp - 1)
