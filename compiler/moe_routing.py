"""Which ranks route an MoE layer's tokens: the one rule vlac's cost model (layer_times.py) and its
runtime (runtime/parallel/moe_local_routing.py, context_parallel.py, mesh.py, support.py) share.

vlac's runtime routes the tokens a rank holds wherever the micro-batch is already split between
ranks, instead of gathering it:

  cp  each context-parallel rank holds its own chunks of the sequence;
  tp  under sequence parallelism each tensor-parallel rank holds its own sequence shard (without
      it every tp rank holds the whole sequence and runs the layer on it, replicated).

Both need whole experts on every rank (etp = 1): split by width (etp = tp), the experts need
every token of the tp group, so such a layer is gathered over tp and cp. Dropless routing
(moe.capacity_factor: null) sends each token copy to its expert whatever the other tokens do. A
layer with a capacity drops the copies past an expert's capacity in the micro-batch's token order
(row by row, each row in sequence order), so which are dropped depends on the copies ahead of each
one: the ranks that split the micro-batch exchange per-(row, piece of the row, expert) copy counts
and each numbers its own copies as one process would (runtime/moe.py), so both kinds of layer are
routed alike.

Expert parallelism folds over the ranks whose tokens differ for the layers' routing: dp, and the
tp and cp shards above.

Pure and elementwise (&, |, *, ==): the arguments may be scalars (one plan) or numpy arrays (many
candidate layouts). The runtime imports this module, so it must stay free of torch and numpy.
"""

from __future__ import annotations


def routes_own_tokens(etp):
    """Whether an MoE layer routes this context-parallel rank's tokens instead of gathering them."""
    return etp == 1


def routes_own_shard(etp, sp):
    """Whether an MoE layer routes this tensor-parallel rank's sequence shard instead of gathering
    the sequence over tp (or running it whole on every tp rank, without sp)."""
    return sp & (etp == 1)


def token_shards(etp, tp, sp, cp):
    """(tp shards, cp shards): how many ranks of the tensor- and of the context-parallel group split
    one micro-batch of the layer, each routing its own share; 1 where the layer is gathered (or
    replicated) over that group. A rank routes mb / (tp shards * cp shards) sequences' tokens."""
    return 1 + routes_own_shard(etp, sp) * (tp - 1), 1 + routes_own_tokens(etp) * (cp - 1)


def ep_fold_ranks(etp, dp, tp, sp, cp):
    """The ranks of a pipeline stage that expert parallelism folds over (ep x edp): the dp ranks and
    the `token_shards`; ep must divide it."""
    tp_shards, cp_shards = token_shards(etp, tp, sp, cp)
    return dp * tp_shards * cp_shards
