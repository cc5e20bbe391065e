"""Which ranks route an MoE layer's tokens: the one rule vlac's cost model (layer_times.py) and its
runtime (runtime/parallel/moe_local_routing.py, context_parallel.py, support.py) share.

Dropless routing (moe.capacity_factor: null) sends each token copy to its expert whatever the
other tokens do, so a rank may route only the tokens it holds and still give one process's
outputs. vlac's runtime does so wherever the tokens are already split between ranks:

  cp  each context-parallel rank holds its own chunks of the sequence;
  tp  under sequence parallelism each tensor-parallel rank holds its own sequence shard (without
      it every tp rank holds the whole sequence and runs the layer on it, replicated).

Both need whole experts on every rank (etp = 1): split by width (etp = tp), the experts need
every token of the tp group. A layer with a capacity drops the copies past an expert's capacity in
the micro-batch's token order, so which are dropped depends on the tokens ahead of each one: over
tp (sequence shards in order) each rank routes its own shard too, after the tp ranks exchange their
per-(row, expert) copy counts (runtime/moe.py); over cp (chunks out of order) it is gathered,
and then over tp as well (the gathered shards are no longer consecutive pieces of a row).

Expert parallelism folds over the ranks whose tokens differ for its layers' routing: for dropless
layers the tp and cp shards above, for layers with a capacity the dp ranks only.

Pure and elementwise (&, |, *, ==): the arguments may be scalars (one plan) or numpy arrays (many
candidate layouts). The runtime imports this module, so it must stay free of torch and numpy.
"""

from __future__ import annotations


def routes_own_tokens(dropless, etp):
    """Whether an MoE layer routes this context-parallel rank's tokens instead of gathering them."""
    return dropless & (etp == 1)


def routes_own_shard(dropless, etp, sp, cp):
    """Whether an MoE layer routes this tensor-parallel rank's sequence shard instead of gathering
    the sequence over tp: dropless, or with a capacity where its tp shards are consecutive pieces
    of the whole sequence (cp = 1; gathered over cp, they are not)."""
    return sp & (etp == 1) & (dropless | (cp == 1))


def token_shards(dropless, etp, tp, sp, cp):
    """(tp shards, cp shards): how many ranks of the tensor- and of the context-parallel group split
    one micro-batch of the layer, each routing its own share; 1 where the layer is gathered (or
    replicated) over that group. A rank routes mb / (tp shards * cp shards) sequences' tokens."""
    return 1 + routes_own_shard(dropless, etp, sp, cp) * (tp - 1), 1 + routes_own_tokens(dropless, etp) * (cp - 1)


def ep_fold_shards(dropless, etp, tp, sp, cp):
    """(tp shards, cp shards) that expert parallelism folds over besides dp: `token_shards` for a
    dropless layer, none for a layer with a capacity (its ep divides dp)."""
    tp_shards, cp_shards = token_shards(dropless, etp, tp, sp, cp)
    return 1 + dropless * (tp_shards - 1), cp_shards


def ep_fold_ranks(dropless, etp, dp, tp, sp, cp):
    """The ranks of a pipeline stage that expert parallelism folds over (ep x edp): ep must divide it."""
    tp_shards, cp_shards = ep_fold_shards(dropless, etp, tp, sp, cp)
    return dp * tp_shards * cp_shards
