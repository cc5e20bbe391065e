"""The planner's choice for a candidate, costing a few thousand layouts instead of every legal one,
with the same result.

The planner (vlac.compiler.planner) costs every legal layout (about 10^5 for the flagship on 256
GPUs) and takes the fastest that fits and that vlac's runtime runs. Most of those layouts cannot
win, and a cheap lower bound on each one's step time shows which (vlac.search.step_bound: the
cost model's step with the slowest rank's and every rank's micro-batch bounded by their compute
and exposed communication, the sends and the optimizer added).

So: cost the layouts whose bound is lowest first; once some of them fit, with best step S, every
layout that could be as fast has a bound <= S; cost exactly those and pick among them with the
planner's own rule (ties included). The answer is the planner's, not an approximation.

The bound depends on a layout only through its (tp, sp, cp, mb, ep, etp) combination and its
pipeline (dp, pp, v, m, schedule): layouts are grouped by those, and each candidate bounds the
groups (about a quarter of the rows), never every row.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vlac.compiler import planner as planner_mod
from vlac.compiler.cost_model import CostModel, Evaluation
from vlac.compiler.plan import Estimate
from vlac.compiler.search_space import COLUMNS, Limits, Space, enumerate_space

from .step_bound import BOUND_PARTS, StepBound, StepTerms

FIRST_SHARE = 1.02  # first pass: the layouts within 2 % of the lowest bound
GROW = 1.25  # and, while none of those fits, widen the band by this factor
# later candidates' first band: the last candidate's ratio of best step to lowest bound, plus 1 %
# (the README's search: 110 passes for 72 candidates without it, 87 with it, 0.48 -> 0.42 CPU s
# choosing; a 400-candidate random search: the same CPU, 4 % fewer layouts costed)
MARGIN = 1.01
# a first band from MARGIN holding more rows than this is cut down to this many (_first_band): a
# pass of the cost model costs ~2 ms plus ~4 us a row (measured on the flagship), so past ~2,000
# rows a second pass is cheaper than the rows a wrong guess adds; the README's candidates cost 100
# to 300 rows each and never reach it
FIRST_ROWS = 2048
# with the combination: all the bound reads of a row (dp follows from tp, cp and pp: it splits no
# group, and last it leaves the groups' order as it was). The pipeline shape (pp, v) leads, so each
# shape's groups are contiguous: StepBound refines a shape's groups as one slice
GROUP_COLUMNS = ("pp", "v", "m", "sched", "dp")


def _codes(columns: list[np.ndarray]) -> np.ndarray:
    """Each row's columns as one integer (mixed radix, as the cost model does: a 1-D unique is
    far faster than a row-wise one)."""
    code = np.zeros(len(columns[0]), np.int64)
    for col in columns:
        col = col.astype(np.int64)
        code = code * (int(col.max()) + 1 if len(col) else 1) + col
    return code


@dataclass
class LayoutSpace:
    """The legal layouts of one (limits, pins): `legal` groups of an enumerated space (a superset
    shared by the depths and shapes it serves). A group is the rows sharing a (tp, sp, cp, mb,
    ep, etp) combination and a pipeline (dp, pp, v, m, schedule): what the bound reads. Groups
    are ordered by pipeline shape (pp, v) first, then combination. `order`
    lists the rows group by group (ascending within each), `start` where each group's rows
    begin."""

    space: Space  # the enumerated layouts
    combos: np.ndarray  # [U, 6] distinct (tp, sp, cp, mb, ep, etp) of the whole enumerated space
    combo: np.ndarray  # per group: its combination
    pipe: dict[str, np.ndarray]  # per group: pp, v, m, sched, dp
    terms: StepTerms  # per group: the bound's coefficients
    sizes: np.ndarray  # per group: its rows
    order: np.ndarray  # the rows, group by group
    start: np.ndarray  # [groups + 1]
    legal: np.ndarray  # per group: whether this depth and shape keep it
    key: str  # names the enumerated space: per-group figures are cached under it
    combos_key: bytes  # names `combos`: per-combination figures are cached under it (supersets of
    # one cluster and batch share their combinations: the README's two supersets hold the same 2,494)
    legal_at: np.ndarray  # the indices of the `legal` groups
    legal_rows: int  # how many rows the `legal` groups hold (len(self): read every pass)
    # the superset's group filters, memoised per shape, per depth and per both (with their indices)
    shape_masks: dict[tuple, np.ndarray] = field(default_factory=dict, repr=False)
    depth_masks: dict[tuple, np.ndarray] = field(default_factory=dict, repr=False)
    both_masks: dict[tuple, tuple[np.ndarray, np.ndarray, int]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, space: Space, key: str) -> LayoutSpace:
        c = space.cols
        combo_code = _codes([c[k] for k in ("tp", "sp", "cp", "mb", "ep", "etp")])
        _, first, inv = np.unique(combo_code, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        combos = np.stack([c[k][first] for k in ("tp", "sp", "cp", "mb", "ep", "etp")], axis=1).astype(np.int64)
        _, gfirst, ginv = np.unique(_codes([c["pp"], c["v"], inv] + [c[k] for k in GROUP_COLUMNS[2:]]),
                                    return_index=True, return_inverse=True)
        ginv = ginv.reshape(-1)
        order = np.argsort(ginv, kind="stable")
        start = np.searchsorted(ginv[order], np.arange(len(gfirst) + 1))
        pipe = {k: c[k][gfirst] for k in GROUP_COLUMNS}
        combo = inv[gfirst]
        return cls(space, combos, combo, pipe, StepTerms.of(pipe, combos[combo]), np.diff(start), order, start,
                   np.ones(len(gfirst), bool), key, combos.tobytes(), np.arange(len(gfirst)), len(space))

    def within(self, lim: Limits) -> LayoutSpace:
        """The groups a model of `lim`'s depth and shape keeps (DepthSpaces): the planner's two
        depth rules on pp and v, and the shape's divisibility rules on tp, ep and etp (which
        read only the combination). Both filters are memoised: candidates of one depth or one
        shape share theirs."""
        depth = (lim.blocks, lim.max_pp)
        shape = (lim.heads, lim.kv_heads, lim.vocab, lim.ffn, lim.experts, lim.expert_ffn)  # what shape_rows reads
        both = self.both_masks.get((depth, shape))
        if both is not None:
            return replace(self, legal=both[0], legal_at=both[1], legal_rows=both[2])
        depth_ok = self.depth_masks.get(depth)
        if depth_ok is None:
            pp, v = self.pipe["pp"], self.pipe["v"]
            depth_ok = self.depth_masks[depth] = (pp <= min(lim.blocks, lim.max_pp)) & ((v == 1) | (pp * v <= lim.blocks))
        shape_ok = self.shape_masks.get(shape)
        if shape_ok is None:
            u = self.combos
            combos_ok = lim.shape_rows({"tp": u[:, 0], "ep": u[:, 4], "etp": u[:, 5]})
            shape_ok = self.shape_masks[shape] = combos_ok[self.combo]
        legal = self.legal & depth_ok & shape_ok
        both = self.both_masks[depth, shape] = (legal, np.nonzero(legal)[0], int(self.sizes[legal].sum()))
        return replace(self, legal=legal, legal_at=both[1], legal_rows=both[2])

    def __len__(self) -> int:
        return self.legal_rows

    def rows_of(self, groups: np.ndarray) -> np.ndarray:
        """The rows of `groups` (a group mask), ascending."""
        at = np.nonzero(groups)[0]
        sizes = self.start[at + 1] - self.start[at]
        ends = np.cumsum(sizes)
        pos = np.arange(ends[-1] if len(ends) else 0) + np.repeat(self.start[at] - (ends - sizes), sizes)
        return np.sort(self.order[pos])

    @property
    def rows(self) -> np.ndarray:
        """This depth's and shape's rows of the enumerated space, ascending."""
        return self.rows_of(self.legal)

    def take(self, rows: np.ndarray) -> Space:
        """Rows of the enumerated space as a Space the cost model evaluates."""
        out = self.space.take(rows)
        out.legal = len(self)  # a superset's counts are not this depth's; the fast path reads neither
        return out

    def layouts(self) -> Space:
        return self.take(self.rows)


RADIX = 1 << 10  # every degree and micro-batch size is below this


class LayerTimes:
    """CostProfile.times of one architecture, memoised per (tp, sp, cp, mb, ep, etp): a layer's
    times do not depend on the depth, so every candidate of the architecture shares them. Called
    like CostProfile.times; stands in for it on a candidate's profile."""

    def __init__(self, times):
        self._times = times
        self.keys = np.empty(0, np.int64)  # sorted
        # every time of every known key side by side, [keys, names, profile keys]: one gather per
        # call rather than one per name (16)
        self.names: tuple[str, ...] = ()
        self.table = np.empty((0, 0, 0))
        # LayoutSpace.combos_key -> [U, keys] per-layer bound parts, and which combinations have them
        self.bound_parts: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        # LayoutSpace.key -> per group: send seconds, optimizer seconds per dense and per expert parameter
        self.fixed: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __call__(self, tp, sp, cp, mb, ep, etp) -> dict[str, np.ndarray]:
        cols = [np.asarray(a).astype(np.int64) for a in (tp, sp, cp, mb, ep, etp)]
        key = np.zeros(len(cols[0]), np.int64)
        for c in cols:
            key = key * RADIX + c
        at = np.searchsorted(self.keys, key)
        if not (len(self.keys) and (self.keys[np.minimum(at, len(self.keys) - 1)] == key).all()):
            new, first = np.unique(key[~np.isin(key, self.keys)], return_index=True)
            rows = np.nonzero(~np.isin(key, self.keys))[0][first]
            lt = self._times(*(c[rows] for c in cols[:1]), cols[1][rows].astype(bool),
                             *(c[rows] for c in cols[2:]))
            self.names = self.names or tuple(lt)
            stacked = np.stack([lt[k] for k in self.names], axis=1)
            keys = np.concatenate([self.keys, new])
            order = np.argsort(keys, kind="stable")
            self.keys = keys[order]
            self.table = (np.concatenate([self.table, stacked]) if len(self.table) else stacked)[order]
            at = np.searchsorted(self.keys, key)
        rows = self.table[at]
        return {k: rows[:, i] for i, k in enumerate(self.names)}

    def per_layer_bound(self, model: CostModel, ls: LayoutSpace, used: np.ndarray | None = None) -> np.ndarray:
        """[U, keys]: one micro-batch's bound parts per layer of each key, per combination of
        the enumerated space; computed for the combinations `used` (default: all) and kept, the
        others' rows left NaN until some candidate uses them (a shape's divisibility rules keep
        a third of the flagship's combinations)."""
        parts, known = self.bound_parts.get(ls.combos_key, (None, None))
        if parts is None:
            parts = np.full((len(ls.combos), model.p.n_keys), np.nan)
            known = np.zeros(len(ls.combos), bool)
            self.bound_parts[ls.combos_key] = (parts, known)
        new = ~known if used is None else used & ~known
        if new.any():
            u = ls.combos[new]
            pk = model._per_key(self(*u.T), u)  # the cost model's own per-layer parts of a micro-batch
            parts[new] = sum(pk[k] for k in BOUND_PARTS)
            known |= new
        return parts

    def fixed_terms(self, model: CostModel, ls: LayoutSpace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per group of the enumerated space, the bound's terms that read the architecture's
        width, sequence and hardware but never its depth (StepTerms.fixed): like the layer
        times, every candidate of the architecture shares them."""
        terms = self.fixed.get(ls.key)
        if terms is None:
            terms = self.fixed[ls.key] = ls.terms.fixed(model)
        return terms


def choose(search: planner_mod.Search, ls: LayoutSpace, allowed: tuple[int, ...], times: LayerTimes,
           ratio: float = FIRST_SHARE) -> tuple[Estimate, int, float] | None:
    """The planner's chosen layout and how many layouts were costed, or None when this cannot
    decide it (no layout fits, or none that vlac's runtime runs does: the planner then falls
    back to the layouts breaking the fewest runtime limits, which needs every row; the caller
    plans in full). Runtime limits are checked on the costed rows only: once one row that fits
    breaks none, the planner's set of runnable rows is exactly the rows that break none.

    `ratio`: the first band, as a multiple of the lowest bound (the best step over its bound of
    the architecture's last candidate, with MARGIN, is a good guess: then one pass suffices).
    Also returns this candidate's ratio."""
    if not ls.legal.any():
        return None
    bound = StepBound(search.model, ls, times)  # inf for the groups this depth and shape drop
    lowest = bound.lowest()
    band = _first_band(bound, ls, lowest * ratio * MARGIN)
    costed = _Costed(search, ls, allowed, bound)
    while True:
        ev, runs = costed.up_to(band)
        ok = ev.fits & ev.timed & runs
        if ok.any():
            break
        if costed.done[ls.legal].all():
            return None
        band *= GROW
    best_step = ev.step[ok].min()
    if best_step > band:  # some rows that could tie or beat it were not costed: cost every one
        ev, runs = costed.up_to(best_step)
    i = planner_mod._best(ev, runs)  # the planner's rule: ties toward less memory, then a fixed column order
    if i is None:
        return None
    return _estimate(search, ev, i), costed.rows, best_step / lowest


def _first_band(bound: StepBound, ls: LayoutSpace, band: float) -> float:
    """`band`, or a lower one holding FIRST_ROWS rows where it holds more. The first band is
    another candidate's ratio of best step to lowest bound: a candidate whose fastest layouts do
    not fit in memory has a large one (1.69 on the flagship test's first sample), and carried to
    the next candidate (1.07) it costed 28,811 rows where 75 could win. Capped, a candidate that
    needs more rows gets them in a second pass."""
    hit = bound.below(band)
    if ls.sizes[hit].sum() <= FIRST_ROWS:
        return band
    at = np.nonzero(hit)[0]
    at = at[np.argsort(bound.value[at], kind="stable")]
    return float(bound.value[at[np.searchsorted(np.cumsum(ls.sizes[at]), FIRST_ROWS)]])


class _Costed:
    """The groups costed so far, each once: widening the band costs only the rows it adds."""

    def __init__(self, search: planner_mod.Search, ls: LayoutSpace, allowed: tuple[int, ...], bound: StepBound):
        self.search, self.ls, self.allowed, self.bound = search, ls, allowed, bound
        self.done = np.zeros(len(ls.sizes), bool)  # per group
        self.rows = 0
        self.parts: list[tuple[np.ndarray, Evaluation, np.ndarray]] = []

    def up_to(self, limit: float) -> tuple[Evaluation, np.ndarray]:
        """Every row with a bound <= limit, costed, in row order (as one evaluation of them
        would be), and which of them vlac's runtime runs."""
        groups = self.bound.below(limit) & ~self.done
        if groups.any():
            self.done |= groups
            rows = self.ls.rows_of(groups)
            self.rows += len(rows)
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
    sub = ls.take(rows)  # rows of the enumerated space
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

    def __init__(self, keep: int = 64, deepest: float | None = None):
        # enumerate every superset at least this deep (the search's deepest candidate, capped: the
        # world's divisors and MAX_VIRTUAL_STAGES bound a space long before): a grid of depths 16,
        # 24 and 32 then enumerates one superset, not two (a 205,000-row space costs ~0.07 s to
        # enumerate and group, as much as 20 candidates' choices)
        self.deepest = int(min(deepest, 1 << 16)) if deepest is not None and math.isfinite(deepest) and deepest > 0 else 0
        self.supersets: OrderedDict[str, LayoutSpace] = OrderedDict()  # the most recent `keep`
        self.keep = keep
        self.checked: dict[str, bool] = {}  # pins -> whether filtered supersets equal the enumeration

    def get(self, lim: Limits, user_max_pp: int | None, pins: dict[str, Any]) -> LayoutSpace:
        pins_key = json.dumps(pins, sort_keys=True, default=str)
        if self.checked.get(pins_key) is False:
            return LayoutSpace.of(enumerate_space(lim, pins), repr(lim) + pins_key)
        depth = 1 << max(0, max(lim.blocks, self.deepest) - 1).bit_length()  # the next power of two
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
            if not self.checked[pins_key]:
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


__all__ = ["DepthSpaces", "LayerTimes", "LayoutSpace", "choose"]
