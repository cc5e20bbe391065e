"""A lower bound on the step time of groups of layouts, from the cost model's own parts: the fast
path (vlac.search.fast_plan) costs only the layouts whose bound is below the best step found.

From the cost model (vlac.compiler.cost_model): a step is m times the slowest rank's micro-batch
t', plus the bubble (the other ranks' micro-batch once each; divided by v when interleaved; never
negative for zero-bubble), plus the stage-to-stage sends, the data-parallel communication and the
optimizer (never negative); recompute and a rank's per-micro-batch data-parallel traffic only
lengthen a rank's micro-batch. With S the sum of every rank's micro-batch:

    step = (m - 1) t' + S        + sends + dp + optimizer     1F1B and GPipe
    step = (m - 1/v) t' + S / v  + ...                         interleaved 1F1B, v virtual stages
    step >= m t'                 + ...                         zero-bubble, or no pipeline

Every coefficient is non-negative, so replacing t' and S by lower bounds bounds the step. A
rank's micro-batch is at least its layers' compute, memory-bound work and exposed tensor, expert
and context communication (BOUND_PARTS): the rank's stage split is the cost model's own
(CostModel.composition: it depends on the pipeline shape and the layers' FLOPs, not the layout),
so t' >= the largest rank's sum of those parts and S >= their sum over every layer. The sends
read only the combination and the pipeline: they are added exactly (CostModel.p2p_seconds). The
optimizer reads the largest rank's trainable parameters and their sharding: added at the most
sharded ZeRO level (>= 1), which no row's optimizer undercuts. Data-parallel communication is
left out (it can hide behind compute).

The bound reads a layout only through its (tp, sp, cp, mb, ep, etp) combination and its pipeline
(dp, pp, v, m, schedule): the groups of a LayoutSpace. On the README's search it leaves 12,200 of
the 7.1 million legal layouts below the best step, against 88,000 for the former bound (t' at
least the mean over ranks and the ceil(layers / pp) cheapest layers, no sends, no optimizer).

The stage split is the costly part (a partition per pipeline shape, per candidate: the depth and
the layers' FLOPs set it), so StepBound starts every group at a bound without it (t' at least the
mean over ranks and the busier end rank: the first holds the embeddings, the last the head, each
with a decoder layer per chunk) and splits a shape only once one of its groups could lie below a
band asked for. The lowest bound and the groups below each band are those of the full bound; on
the README's search about half the shapes are split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vlac.compiler.cost_model import INTERLEAVED, ZERO_BUBBLE, CostModel
from vlac.compiler.data_parallel import optimizer_seconds

if TYPE_CHECKING:
    from .fast_plan import LayerTimes, LayoutSpace

BOUND_PARTS = ("compute", "elementwise", "tp_comm", "ep_comm", "cp_comm")
# the bound is computed in another order than the cost model sums the step: kept this far below
# it, so that rounding never sets aside a layout whose step equals the bound
ROUNDING = 1e-9
SHAPE_RADIX = 1 << 10  # a pipeline shape (pp, v) as one integer: pp * SHAPE_RADIX + v
SEND_DEGREES = ("mb", "cp", "tp", "sp", "dp", "pp", "m")  # what CostModel.p2p_seconds reads


@dataclass
class StepTerms:
    """Per group of a LayoutSpace, what the bound reads of its layouts (module docstring): the
    coefficients of t' and S, its pipeline shape (pp, v), and its degrees as floats for the sends
    and the optimizer. Fixed per enumerated space: every candidate it serves shares them. The
    groups come ordered by pipeline shape (LayoutSpace.of): a shape's groups are one slice."""

    t_max: np.ndarray  # m - 1 (1F1B, GPipe), m - 1/v (interleaved), m (zero-bubble, no pipeline)
    total: np.ndarray  # 1, 1/v, 0
    shapes: np.ndarray  # the distinct pp * SHAPE_RADIX + v, ascending
    shape_at: np.ndarray  # per group: its shape's index in shapes (non-decreasing)
    degrees: dict[str, np.ndarray]  # per group: tp, sp (bool), cp, mb, ep, etp, dp, pp, m, v, d_dense, d_expert
    shape_start: np.ndarray  # [shapes + 1]: where each shape's groups begin
    # memory seconds per byte -> per group, optimizer seconds per dense and per expert parameter
    _optimizer: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    # the distinct degrees the sends read, and each group's index among them
    _sends_of: tuple[dict[str, np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, pipe: dict[str, np.ndarray], combos: np.ndarray) -> StepTerms:
        """`pipe`: per group pp, v, m, sched, dp; `combos`: per group (tp, sp, cp, mb, ep, etp)."""
        m, v = pipe["m"].astype(float), pipe["v"].astype(float)
        piped = pipe["pp"] > 1
        zero_bubble = ~piped | (pipe["sched"] == ZERO_BUBBLE)
        interleaved = piped & (pipe["sched"] == INTERLEAVED)
        shapes, shape_at = np.unique(pipe["pp"].astype(np.int64) * SHAPE_RADIX + pipe["v"], return_inverse=True)
        shape_at = shape_at.reshape(-1)
        if (np.diff(shape_at) < 0).any():
            raise ValueError("StepTerms needs the groups ordered by pipeline shape (LayoutSpace.of orders them so)")
        d = {k: combos[:, i].astype(float) for i, k in enumerate(("tp", "sp", "cp", "mb", "ep", "etp"))}
        d.update({k: pipe[k].astype(float) for k in ("dp", "pp", "m", "v")})
        d["sp"] = combos[:, 1].astype(bool)
        d["d_dense"] = d["dp"] * d["cp"]
        d["d_expert"] = d["d_dense"] * d["tp"] / (d["ep"] * d["etp"])
        return cls(np.where(zero_bubble, m, np.where(interleaved, m - 1 / v, m - 1)),
                   np.where(zero_bubble, 0.0, np.where(interleaved, 1 / v, 1.0)), shapes, shape_at, d,
                   np.searchsorted(shape_at, np.arange(len(shapes) + 1)))

    def groups_of(self, shape: int) -> slice:
        """The groups of pipeline shape `shape` (an index into shapes)."""
        return slice(int(self.shape_start[shape]), int(self.shape_start[shape + 1]))

    def fixed(self, model: CostModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per group, what does not depend on the depth: the stage-to-stage send seconds (exact:
        they read only the combination and the pipeline), and the optimizer's seconds per
        trainable dense and per trainable expert parameter of the largest rank at the most
        sharded ZeRO level, which no layout's undercuts (the optimizer is linear in them)."""
        if self._sends_of is None:
            # the sends read 7 of a group's 12 degrees: the distinct ones (about a fifth of the
            # groups on the flagship) are costed, once per architecture each
            cols = [self.degrees[k] for k in SEND_DEGREES]
            order = np.lexsort(cols)  # a row-wise np.unique is several times slower
            new = np.ones(len(order), bool)
            new[1:] = np.any([c[order][1:] != c[order][:-1] for c in cols], axis=0)
            at = np.empty(len(order), np.int64)
            at[order] = np.cumsum(new) - 1
            first = order[new]
            self._sends_of = ({k: c[first] for k, c in zip(SEND_DEGREES, cols)}, at)
        (u, at) = self._sends_of
        sends = model.p2p_seconds(u["mb"], u["cp"], u["tp"], u["sp"].astype(bool), u["dp"], u["pp"], u["m"])[at]
        return (sends, *self._optimizer_per_parameter(model.hw))

    def _optimizer_per_parameter(self, hw) -> tuple[np.ndarray, np.ndarray]:
        # it reads the hardware only through its memory seconds per byte (linear): kept per rate,
        # so architectures on one cluster share it
        rate = float(hw.memory_seconds(1.0))
        per = self._optimizer.get(rate)
        if per is None:
            d = self.degrees
            col = {k: d[k][:, None] for k in ("tp", "ep", "etp")}
            one, zero = np.ones(len(d["tp"])), np.zeros(len(d["tp"]))
            per = self._optimizer[rate] = tuple(
                optimizer_seconds(hw, dense, expert, col, d["d_dense"][:, None], d["d_expert"][:, None], one[:, None])
                for dense, expert in ((one, zero), (zero, one)))
        return per


class StepBound:
    """A lower bound on the step time of one candidate's legal groups (module docstring), made
    tight shape by shape as the fast path needs it. Every group starts at a bound without the
    stage split: the largest rank's sum of the bound parts, and its trainable parameters, are at
    least the mean over the pp ranks and at least those of the busier end rank (the embeddings
    or the head, and v chunks of at least one decoder layer each: CostProfile.stage_chunks). A
    pipeline shape is refined (its groups given the slowest rank of the cost model's own split:
    CostModel.composition partitions the layers for it) only once some group of it could lie
    below a limit asked for: refined >= unrefined, so the groups below any limit, and the lowest
    bound, are those with every shape refined. A shape without a pipeline has one rank: its
    mean is its slowest rank."""

    def __init__(self, model: CostModel, ls: LayoutSpace, times: LayerTimes):
        p, terms = model.p, ls.terms
        self.model, self.ls, self.terms = model, ls, terms
        # only the combinations of the groups this depth and shape keep: the layer times of the
        # others are not needed (their rows of `parts` stay NaN)
        self.used = np.zeros(len(ls.combos), bool)
        self.used[ls.combo[ls.legal_at]] = True
        self.parts = times.per_layer_bound(model, ls, self.used)  # [U, keys]: one micro-batch's bound parts per layer
        seq = np.asarray(p.sequence, np.int64)
        counts = np.bincount(seq, minlength=p.n_keys)  # every layer once
        self.total = self.parts @ counts  # S >= this, per combination
        self.sends, self.per_dense, self.per_expert = times.fixed_terms(model, ls)
        # the end ranks: the first holds what comes before the first decoder layer (the embeddings)
        # and the last what comes after the last (the head), each with v chunks of at least one
        # decoder layer (CostProfile.stage_chunks)
        blocks = _decoder_positions(model)
        ends = [np.bincount(seq[:blocks[0]], minlength=p.n_keys), np.bincount(seq[blocks[-1] + 1:], minlength=p.n_keys)]
        block_keys = np.unique(seq[blocks])
        at = ls.legal_at  # the groups this depth and shape keep: the others stay at inf
        combo = ls.combo[at]
        end_t = np.maximum(self.parts @ ends[0], self.parts @ ends[1])[combo]
        layer_t = self.parts[:, block_keys].min(axis=1)[combo]
        pp, v = terms.degrees["pp"][at], terms.degrees["v"][at]
        s = self.total[combo]

        def largest(total, end, layer):  # a largest rank's sum is at least the mean and an end rank's
            return np.maximum(total / pp, end + v * layer)

        trained = [largest(counts @ w, max(ends[0] @ w, ends[1] @ w), w[block_keys].min())
                   for w in (model.trainable_dense, model.trainable_expert)]
        bound = (terms.t_max[at] * largest(s, end_t, layer_t) + terms.total[at] * s + self.sends[at]
                 + self.per_dense[at] * trained[0] + self.per_expert[at] * trained[1])
        self.value = np.full(len(ls.sizes), np.inf)
        self.value[at] = bound * (1 - ROUNDING)
        self._rank_sums: dict[tuple[float, ...], np.ndarray] = {}
        self.refined = terms.shapes // SHAPE_RADIX == 1  # one rank: the mean is the slowest

    def lowest(self) -> float:
        """The lowest bound of any legal group (inf if none), as with every shape refined."""
        while True:
            g = int(np.argmin(self.value))
            j = self.terms.shape_at[g]
            if self.refined[j] or not np.isfinite(self.value[g]):
                return float(self.value[g])
            self._refine([j])

    def below(self, limit: float) -> np.ndarray:
        """The groups whose bound is <= limit (a group mask), as with every shape refined."""
        hit = self.value <= limit
        self._refine_shapes_of(hit)
        return self.value <= limit

    def refine_all(self) -> np.ndarray:
        """Every group's tight bound (inf where not legal)."""
        self._refine_shapes_of(self.ls.legal)
        return self.value

    def _refine_shapes_of(self, groups: np.ndarray) -> None:
        """Refines the shapes of `groups` (legal ones: the cost model splits the layers only for
        the shapes this depth keeps)."""
        hit = np.logical_or.reduceat(groups, self.terms.shape_start[:-1])  # every shape holds a group
        shapes = np.nonzero(hit & ~self.refined)[0]
        if len(shapes):
            self._refine(shapes.tolist())

    def _refine(self, shapes: list[int]) -> None:
        """Tight bounds for the legal groups of `shapes` (indices into StepTerms.shapes): the
        largest rank's sum of the bound parts, and its trainable dense and expert parameters,
        under the cost model's stage split. Ranks holding the same layers have the same sums:
        the distinct ones (a few per shape: the first and last ranks carry the embeddings and
        the head; middle ranks of many shapes hold the same layers) are summed once, all of a
        call's new ones in one product."""
        model, ls, terms = self.model, self.ls, self.terms
        ranks_of = []
        for j in shapes:
            code = int(terms.shapes[j])
            counts = model.composition(code // SHAPE_RADIX, code % SHAPE_RADIX)[1]  # [pp, keys]
            ranks_of.append(list({tuple(r) for r in counts.tolist()}))  # a few of at most pp
        new = sorted({r for ranks in ranks_of for r in ranks if r not in self._rank_sums})
        if new:
            # einsum rather than a matrix product, whose BLAS threads cost several times the
            # product's own CPU time on arrays this small
            for r, sums in zip(new, np.einsum("uk,rk->ru", self.parts, np.array(new))):
                self._rank_sums[r] = sums
        for j, ranks in zip(shapes, ranks_of):
            slowest = np.maximum.reduce([self._rank_sums[r] for r in ranks])
            held = np.array(ranks)
            dense, expert = (held @ model.trainable_dense).max(), (held @ model.trainable_expert).max()
            g = terms.groups_of(j)
            c = ls.combo[g]
            bound = (terms.t_max[g] * slowest[c] + terms.total[g] * self.total[c] + self.sends[g]
                     + self.per_dense[g] * dense + self.per_expert[g] * expert) * (1 - ROUNDING)
            self.value[g] = np.where(ls.legal[g], bound, np.inf)
            self.refined[j] = True


def _decoder_positions(model: CostModel) -> np.ndarray:
    """The positions of the decoder layers in the profile's sequence, as the cost model's stage
    split reads them (CostProfile.stage_weights, which the model keeps for its splits)."""
    return np.asarray(model.stage_weights()[1], np.int64)


__all__ = ["BOUND_PARTS", "ROUNDING", "StepBound", "StepTerms"]
