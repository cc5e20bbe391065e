"""The planner's choice for a candidate, costing a few thousand layouts instead of every legal one,
with the same result.

The planner (vlac.compiler.planner) costs every legal layout (about 10^5 for the flagship on 256
GPUs) and takes the fastest that fits and that vlac's runtime runs. Most of those layouts cannot
win, and a cheap lower bound on each one's step time shows which:

    step >= m * t_mean * (1 + (pp - 1) / m)        1F1B and GPipe
    step >= m * t_mean * (1 + (pp - 1) / (m v))    interleaved 1F1B with v virtual stages
    step >= m * t_mean                              zero-bubble, or no pipeline

where t_mean is one micro-batch's compute, memory-bound work and exposed tensor/expert/context
communication averaged over the pipeline ranks. This follows from the cost model
(vlac.compiler.cost_model): a step is m times the slowest rank's micro-batch, plus the bubble
(the other ranks' micro-batch once each; divided by v when interleaved; never negative), plus
sends, data-parallel communication and the optimizer (never negative); the slowest rank is at
least the mean, and recompute only adds. The bound uses the cost model's own per-layer parts.

So: cost the layouts whose bound is lowest first; once some of them fit, with best step S, every
layout that could be as fast has a bound <= S; cost exactly those and pick among them with the
planner's own rule (ties included). The answer is the planner's, not an approximation.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vlac.compiler import planner as planner_mod
from vlac.compiler.cost_model import INTERLEAVED, ZERO_BUBBLE, CostModel, Evaluation
from vlac.compiler.plan import Estimate
from vlac.compiler.search_space import COLUMNS, Limits, Space, enumerate_space

FIRST_SHARE = 1.02  # first pass: the layouts within 2 % of the lowest bound
GROW = 1.25  # and, while none of those fits, widen the band by this factor
BOUND_PARTS = ("compute", "elementwise", "tp_comm", "ep_comm", "cp_comm")


@dataclass
class LayoutSpace:
    """The legal layouts of one (limits, pins): rows of an enumerated space (a superset shared by
    the depths it serves), with what the bound needs that does not depend on the model: the
    distinct (tp, sp, cp, mb, ep, etp) combinations of the enumerated space and each row's
    combination and pipeline factor."""

    space: Space  # the enumerated layouts; this depth's are `rows` of them
    rows: np.ndarray
    combos: np.ndarray  # [U, 6], of the whole enumerated space (per-combination figures are shared)
    inverse: np.ndarray  # per row of `rows`: its combination
    bubble_factor: np.ndarray  # per row of `rows`: the multiplier of t_mean in the bound
    pp: np.ndarray  # per row of `rows`
    key: str  # names the enumerated space: per-combination figures are cached under it
    # a superset's row filters, memoised: candidates of one shape (or one depth) share theirs
    shape_masks: dict[tuple, np.ndarray] = field(default_factory=dict, repr=False)
    depth_masks: dict[tuple, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, space: Space, key: str) -> LayoutSpace:
        c = space.cols
        combos = np.stack([c["tp"], c["sp"], c["cp"], c["mb"], c["ep"], c["etp"]], axis=1).astype(np.int64)
        code = np.zeros(len(space), np.int64)
        for j in range(combos.shape[1]):  # mixed radix, as the cost model does: a 1-D unique is fast
            code = code * (int(combos[:, j].max()) + 1) + combos[:, j] if len(space) else code
        _, first, inv = np.unique(code, return_index=True, return_inverse=True)
        m, pp, v = (c[k].astype(float) for k in ("m", "pp", "v"))
        factor = np.where(pp > 1, np.where(c["sched"] == ZERO_BUBBLE, m,
                                           np.where(c["sched"] == INTERLEAVED, m + (pp - 1) / v, m + pp - 1)), m)
        return cls(space, np.arange(len(space)), combos[first], inv.reshape(-1), factor, pp, key)

    def within(self, lim: Limits) -> LayoutSpace:
        """The rows a model of `lim`'s depth and shape keeps (DepthSpaces)."""
        c = self.space.cols
        depth = (lim.blocks, lim.max_pp)
        depth_ok = self.depth_masks.get(depth)
        if depth_ok is None:
            depth_ok = self.depth_masks[depth] = \
                (c["pp"] <= min(lim.blocks, lim.max_pp)) & ((c["v"] == 1) | (c["pp"] * c["v"] <= lim.blocks))
        shape = (lim.heads, lim.kv_heads, lim.vocab, lim.ffn, lim.experts, lim.expert_ffn)  # what shape_rows reads
        shape_ok = self.shape_masks.get(shape)
        if shape_ok is None:
            shape_ok = self.shape_masks[shape] = lim.shape_rows(c)
        keep = np.nonzero(depth_ok & shape_ok)[0]
        return LayoutSpace(self.space, keep, self.combos, self.inverse[keep], self.bubble_factor[keep], self.pp[keep],
                           self.key)

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, at: np.ndarray) -> Space:
        """Rows `at` (positions among this depth's rows) as a Space the cost model evaluates."""
        out = self.space.take(self.rows[at])
        out.legal = len(self.rows)  # a superset's counts are not this depth's; the fast path reads neither
        return out

    def layouts(self) -> Space:
        return self.take(np.arange(len(self.rows)))


RADIX = 1 << 10  # every degree and micro-batch size is below this


class LayerTimes:
    """CostProfile.times of one architecture, memoised per (tp, sp, cp, mb, ep, etp): a layer's
    times do not depend on the depth, so every candidate of the architecture shares them. Called
    like CostProfile.times; stands in for it on a candidate's profile."""

    def __init__(self, times):
        self._times = times
        self.keys = np.empty(0, np.int64)  # sorted
        self.table: dict[str, np.ndarray] = {}
        self.bound_parts: dict[str, np.ndarray] = {}  # LayoutSpace.key -> [U, keys] per-layer bound parts

    def __call__(self, tp, sp, cp, mb, ep, etp) -> dict[str, np.ndarray]:
        cols = [np.asarray(a).astype(np.int64) for a in (tp, sp, cp, mb, ep, etp)]
        key = np.zeros(len(cols[0]), np.int64)
        for c in cols:
            key = key * RADIX + c
        new, first = np.unique(key[~np.isin(key, self.keys)], return_index=True)
        if len(new):
            rows = np.nonzero(~np.isin(key, self.keys))[0][first]
            lt = self._times(*(c[rows] for c in cols[:1]), cols[1][rows].astype(bool),
                             *(c[rows] for c in cols[2:]))
            keys = np.concatenate([self.keys, new])
            order = np.argsort(keys, kind="stable")
            self.keys = keys[order]
            self.table = {k: np.concatenate([self.table[k], v])[order] if self.table else v[order]
                          for k, v in lt.items()}
        at = np.searchsorted(self.keys, key)
        return {k: v[at] for k, v in self.table.items()}

    def per_layer_bound(self, model: CostModel, ls: LayoutSpace) -> np.ndarray:
        """[U, keys]: one micro-batch's bound parts per layer of each key, per combination."""
        parts = self.bound_parts.get(ls.key)
        if parts is None:
            u = ls.combos
            pk = model._per_key(self(*u.T), u)  # the cost model's own per-layer parts of a micro-batch
            parts = self.bound_parts[ls.key] = sum(pk[k] for k in BOUND_PARTS)
        return parts


def lower_bounds(model: CostModel, ls: LayoutSpace, times: LayerTimes) -> np.ndarray:
    """A lower bound on every row's step time (module docstring)."""
    layers_of_key = np.bincount(model.p.sequence, minlength=model.p.n_keys)
    total = times.per_layer_bound(model, ls) @ layers_of_key  # one micro-batch through every layer, [U]
    return total[ls.inverse] / ls.pp * ls.bubble_factor


def choose(search: planner_mod.Search, ls: LayoutSpace, allowed: tuple[int, ...], times: LayerTimes,
           ratio: float = FIRST_SHARE) -> tuple[Estimate, int, float] | None:
    """The planner's chosen layout and how many layouts were costed, or None when this cannot
    decide it (no layout fits, or none that vlac's runtime runs does: the planner then falls
    back to the layouts breaking the fewest runtime limits, which needs every row; the caller
    plans in full). Runtime limits are checked on the costed rows only: once one row that fits
    breaks none, the planner's set of runnable rows is exactly the rows that break none.

    `ratio`: the first band, as a multiple of the lowest bound (the best step over its bound of
    the architecture's last candidate is a good guess: then one pass suffices). Also returns
    this candidate's ratio."""
    n = len(ls)
    if n == 0:
        return None
    bound = lower_bounds(search.model, ls, times)
    lowest = bound.min()
    band = lowest * ratio
    costed = _Costed(search, ls, allowed, bound)
    while True:
        ev, runs = costed.up_to(band)
        ok = ev.fits & ev.timed & runs
        if ok.any():
            break
        if costed.done.all():
            return None
        band *= GROW
    best_step = ev.step[ok].min()
    if best_step > band:  # some rows that could tie or beat it were not costed: cost every one
        ev, runs = costed.up_to(best_step)
    i = planner_mod._best(ev, runs)  # the planner's rule: ties toward less memory, then a fixed column order
    if i is None:
        return None
    return _estimate(search, ev, i), int(costed.done.sum()), best_step / lowest


class _Costed:
    """The rows costed so far, each once: widening the band costs only the rows it adds."""

    def __init__(self, search: planner_mod.Search, ls: LayoutSpace, allowed: tuple[int, ...], bound: np.ndarray):
        self.search, self.ls, self.allowed, self.bound = search, ls, allowed, bound
        self.done = np.zeros(len(ls), bool)
        self.parts: list[tuple[np.ndarray, Evaluation, np.ndarray]] = []

    def up_to(self, limit: float) -> tuple[Evaluation, np.ndarray]:
        """Every row with a bound <= limit, costed, in row order (as one evaluation of them
        would be), and which of them vlac's runtime runs."""
        rows = np.nonzero((self.bound <= limit) & ~self.done)[0]
        if len(rows):
            self.done[rows] = True
            self.parts.append((rows, *_cost(self.search, self.ls, rows, self.allowed)))
        if len(self.parts) == 1:
            return self.parts[0][1], self.parts[0][2]
        order = np.argsort(np.concatenate([r for r, _, _ in self.parts]), kind="stable")
        evs = [ev for _, ev, _ in self.parts]
        pmax = max(ev.policy.shape[1] for ev in evs)
        cat = lambda arrays: np.concatenate(arrays)[order]  # noqa: E731
        pad = lambda a: np.pad(a, ((0, 0), (0, pmax - a.shape[1])), constant_values=-1)  # noqa: E731
        policy = cat([pad(ev.policy) for ev in evs])
        # each rank's count of blocks recomputed in full travels with its policy (partial recompute)
        layers = cat([pad(ev.layers) for ev in evs]) if all(ev.layers is not None for ev in evs) else None
        space = Space({k: cat([ev.space.cols[k] for ev in evs]) for k in evs[0].space.cols}, len(self.ls), {})
        merged = Evaluation(space, cat([ev.peak for ev in evs]), cat([ev.fits for ev in evs]),
                            cat([ev.timed for ev in evs]), cat([ev.step for ev in evs]), policy, {}, {}, layers=layers)
        return merged, cat([runs for _, _, runs in self.parts])


def _estimate(search: planner_mod.Search, ev, i: int) -> Estimate:
    """The chosen row as the planner's Estimate, without its breakdowns (the memory and time
    parts and the per-stage figures, which cost another evaluation and no metric reads)."""
    exp = search.exp
    return Estimate(planner_mod._layout(search, ev, i), {}, {}, float(ev.step[i]), float(ev.peak[i]), bool(ev.fits[i]),
                    search.flops_per_step, search.cluster.world_size, search.cluster.gpu.bf16_flops,
                    exp.train.global_batch_tokens)


def _cost(search: planner_mod.Search, ls: LayoutSpace, rows: np.ndarray, allowed: tuple[int, ...]):
    sub = ls.take(rows)
    broken = np.zeros(len(sub), bool)
    for mask in search.runtime_limits(sub).values():
        broken |= mask
    return search.model.evaluate(sub, allowed), ~broken


class DepthSpaces:
    """The legal layouts of every depth and shape of the architectures on one cluster and batch,
    enumerated once per power of two of the depth.

    Depth enters the legal space only through two of the planner's rules (Limits.rules(): "pp <=
    the decoder layers (and max_pp)", and interleaving's "pp*virtual_stages <= decoder layers"),
    the model's shape (heads, widths, experts) only through divisibility rules on tp, ep and etp
    (Limits.shape_rows); every other rule, and the dominance pruning, is row by row. So the
    layouts of depth L are the layouts enumerated for a depth D >= L with every shape rule
    passing (Limits.shapeless) that keep pp <= min(L, max_pp), pp*v <= L when interleaved, and
    the shape's divisibility. The first superset of each pin set is checked against the
    planner's own enumeration at a depth and shape it serves; if they differ (the rules
    changed), no superset is used."""

    def __init__(self, keep: int = 64):
        self.supersets: OrderedDict[str, LayoutSpace] = OrderedDict()  # the most recent `keep`
        self.keep = keep
        self.checked: dict[str, bool] = {}  # pins -> whether filtered supersets equal the enumeration

    def get(self, lim: Limits, user_max_pp: int | None, pins: dict[str, Any]) -> LayoutSpace:
        pins_key = json.dumps(pins, sort_keys=True, default=str)
        if self.checked.get(pins_key) is False:
            return LayoutSpace.of(enumerate_space(lim, pins), repr(lim) + pins_key)
        depth = 1 << max(0, lim.blocks - 1).bit_length()  # the next power of two
        big = replace(lim.shapeless(), blocks=depth, max_pp=user_max_pp or depth)
        key = repr(big) + pins_key
        superset = self.supersets.get(key)
        if superset is None:
            superset = self.supersets[key] = LayoutSpace.of(enumerate_space(big, pins), key)
            while len(self.supersets) > self.keep:
                self.supersets.popitem(last=False)
        self.supersets.move_to_end(key)
        own = superset.within(lim)
        if pins_key not in self.checked:
            exact = enumerate_space(lim, pins)
            self.checked[pins_key] = _same_rows(own.layouts(), exact)
            return LayoutSpace.of(exact, repr(lim) + pins_key)
        return own


def _same_rows(a: Space, b: Space) -> bool:
    if len(a) != len(b):
        return False
    return bool(np.array_equal(_row_keys(a), _row_keys(b)))


def _row_keys(s: Space) -> np.ndarray:
    """Each row as one integer, sorted. Thirteen columns of 10 bits overflow 64, so this is a hash
    (numpy's integer arithmetic wraps): the same rows give the same keys; other rows almost
    surely do not."""
    key = np.zeros(len(s), np.int64)
    for k in COLUMNS:
        key = key * 1031 + s.cols[k].astype(np.int64)
    return np.sort(key)


__all__ = ["DepthSpaces", "LayerTimes", "LayoutSpace", "choose", "lower_bounds"]
