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
(dp, pp, v, m, schedule): the groups of a LayoutSpace. On the README's search it leaves 13,000 of
the 7.1 million legal layouts below the best step, against 88,000 for the former bound (t' at
least the mean over ranks and the ceil(layers / pp) cheapest layers, no sends, no optimizer).
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


@dataclass
class StepTerms:
    """Per group of a LayoutSpace, what the bound reads of its layouts (module docstring): the
    coefficients of t' and S, its pipeline shape (pp, v), and its degrees as floats for the sends
    and the optimizer. Fixed per enumerated space: every candidate it serves shares them."""

    t_max: np.ndarray  # m - 1 (1F1B, GPipe), m - 1/v (interleaved), m (zero-bubble, no pipeline)
    total: np.ndarray  # 1, 1/v, 0
    shapes: np.ndarray  # the distinct pp * SHAPE_RADIX + v
    shape_at: np.ndarray  # per group: its shape's index in shapes
    degrees: dict[str, np.ndarray]  # per group: tp, sp (bool), cp, mb, ep, etp, dp, pp, m, d_dense, d_expert
    # memory seconds per byte -> per group, optimizer seconds per dense and per expert parameter
    _optimizer: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, pipe: dict[str, np.ndarray], combos: np.ndarray) -> StepTerms:
        """`pipe`: per group pp, v, m, sched, dp; `combos`: per group (tp, sp, cp, mb, ep, etp)."""
        m, v = pipe["m"].astype(float), pipe["v"].astype(float)
        piped = pipe["pp"] > 1
        zero_bubble = ~piped | (pipe["sched"] == ZERO_BUBBLE)
        interleaved = piped & (pipe["sched"] == INTERLEAVED)
        shapes, shape_at = np.unique(pipe["pp"].astype(np.int64) * SHAPE_RADIX + pipe["v"], return_inverse=True)
        d = {k: combos[:, i].astype(float) for i, k in enumerate(("tp", "sp", "cp", "mb", "ep", "etp"))}
        d.update({k: pipe[k].astype(float) for k in ("dp", "pp", "m")})
        d["sp"] = combos[:, 1].astype(bool)
        d["d_dense"] = d["dp"] * d["cp"]
        d["d_expert"] = d["d_dense"] * d["tp"] / (d["ep"] * d["etp"])
        return cls(np.where(zero_bubble, m, np.where(interleaved, m - 1 / v, m - 1)),
                   np.where(zero_bubble, 0.0, np.where(interleaved, 1 / v, 1.0)), shapes, shape_at.reshape(-1), d)

    def fixed(self, model: CostModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per group, what does not depend on the depth: the stage-to-stage send seconds (exact:
        they read only the combination and the pipeline), and the optimizer's seconds per
        trainable dense and per trainable expert parameter of the largest rank at the most
        sharded ZeRO level, which no layout's undercuts (the optimizer is linear in them)."""
        d = self.degrees
        sends = model.p2p_seconds(d["mb"], d["cp"], d["tp"], d["sp"], d["dp"], d["pp"], d["m"])
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


def lower_bounds(model: CostModel, ls: LayoutSpace, times: LayerTimes) -> np.ndarray:
    """A lower bound on the step time of every group's layouts (module docstring); inf for the
    groups this depth and shape do not keep."""
    p, terms = model.p, ls.terms
    # the pipeline shapes and combinations this depth and shape keep: the cost model splits the
    # layers only for those shapes, and only those combinations' layer times are needed
    kept = np.bincount(terms.shape_at, weights=ls.legal, minlength=len(terms.shapes)) > 0
    used = np.bincount(ls.combo, weights=ls.legal, minlength=len(ls.combos)) > 0
    parts = times.per_layer_bound(model, ls, used)  # [U, keys]: one micro-batch's bound parts per layer
    slowest, trained = _slowest_ranks(model, parts, terms.shapes, kept, used)
    total = parts @ np.bincount(p.sequence, minlength=p.n_keys)  # S >= this: every layer once
    sends, per_dense, per_expert = times.fixed_terms(model, ls)
    bound = (terms.t_max * slowest[ls.combo, terms.shape_at] + terms.total * total[ls.combo] + sends
             + per_dense * trained[0][terms.shape_at] + per_expert * trained[1][terms.shape_at])
    with np.errstate(invalid="ignore"):  # NaN where a combination is not used: those groups are not legal
        return np.where(ls.legal, bound * (1 - ROUNDING), np.inf)


def _slowest_ranks(model: CostModel, parts: np.ndarray, shapes: np.ndarray, kept: np.ndarray,
                   used: np.ndarray):
    """Per pipeline shape (pp * SHAPE_RADIX + v) of the cost model's stage split: [U, shapes] the
    largest rank's sum of per-layer `parts` ([U, keys]) per combination, and the largest rank's
    trainable dense and expert parameters ([shapes] each); 0 for the shapes not `kept` and the
    combinations not `used`. Ranks holding the same layers have the same sums: the distinct
    ones are summed once (a few per shape: the first and last ranks carry the embeddings and
    the head), by einsum rather than a matrix product, whose BLAS threads cost several times
    the product's own CPU time on arrays this small."""
    slowest = np.zeros((len(shapes), len(parts)))
    dense, expert = np.zeros(len(shapes)), np.zeros(len(shapes))
    at = np.nonzero(kept)[0]
    counts = [model.composition(code // SHAPE_RADIX, code % SHAPE_RADIX)[1] for code in shapes[at].tolist()]
    if not counts:
        return slowest.T, (dense, expert)
    distinct, which = np.unique(np.concatenate(counts), axis=0, return_inverse=True)  # [distinct ranks, keys]
    which = which.reshape(-1).tolist()
    per_rank = np.einsum("rk,uk->ru", distinct, parts[used])
    dense_r, expert_r = distinct @ model.trainable_dense, distinct @ model.trainable_expert
    first = 0
    for j, c in zip(at.tolist(), counts):
        rows = sorted(set(which[first:first + len(c)]))  # a few distinct ranks of at most pp
        slowest[j, used] = per_rank[rows].max(axis=0)
        dense[j], expert[j] = dense_r[rows].max(), expert_r[rows].max()
        first += len(c)
    return slowest.T, (dense, expert)


__all__ = ["BOUND_PARTS", "ROUNDING", "StepTerms", "lower_bounds"]
