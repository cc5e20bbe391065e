"""A pipeline schedule, op by op: the order each rank runs its forward (F), backward (B) and
deferred weight-gradient (W) passes, and their start and end times when every pass waits for
its neighbour stage. It draws the plan's timeline and checks the cost model's bubble formulas.

Orders (Megatron-LM / torch.distributed.pipelining):
- 1f1b: rank r runs min(p-r-1, m) warm-up forwards, then alternates one forward, one backward.
- gpipe: all forwards, then all backwards.
- interleaved_1f1b: v model chunks per rank (virtual stage c*p + r); forwards walk p micro-batches
  through chunk 0, then chunk 1, ...; warm-up (p-r-1)*2 + (v-1)*p passes.
- zero_bubble (ZB-H1, Qi et al. 2023): 1F1B with the backward split into B (input gradient)
  and W (weight gradient); a rank runs a deferred W whenever its next F or B would wait, so the
  W passes fill the warm-up and cool-down bubbles; the rest run at the end.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    rank: int
    kind: str  # F, B or W
    micro: int
    chunk: int
    start: float
    end: float


def rank_order(schedule: str, pp: int, v: int, m: int, rank: int) -> list[tuple[str, int, int]]:
    """(kind, micro-batch, chunk) in the order `rank` runs them."""
    if schedule == "interleaved_1f1b" and v > 1:
        return _interleaved(pp, v, m, rank)
    fwd = [("F", i, 0) for i in range(m)]
    bwd = [("B", i, 0) for i in range(m)]
    if schedule == "gpipe" or pp == 1:
        return fwd + bwd if schedule == "gpipe" else [op for i in range(m) for op in (fwd[i], bwd[i])]
    warm = min(pp - rank - 1, m)
    order = fwd[:warm]
    for i in range(m - warm):
        order += [fwd[warm + i], bwd[i]]
    order += bwd[m - warm:]
    return order


def _interleaved(pp: int, v: int, m: int, rank: int) -> list[tuple[str, int, int]]:
    def at(k: int, backward: bool) -> tuple[str, int, int]:
        group, within = divmod(k, pp * v)
        chunk = within // pp
        return ("B" if backward else "F", group * pp + within % pp, v - 1 - chunk if backward else chunk)

    total = m * v
    warm = min((pp - rank - 1) * 2 + (v - 1) * pp, total)
    order = [at(k, False) for k in range(warm)]
    for k in range(total - warm):
        order += [at(warm + k, False), at(k, True)]
    order += [at(k, True) for k in range(total - warm, total)]
    return order


def simulate(schedule: str, pp: int, v: int, m: int, fwd: list[float], bwd: list[float],
             wgrad: list[float] | None = None, p2p: float = 0.0) -> list[Op]:
    """Times of every pass; `fwd`, `bwd`, `wgrad` are one micro-batch's seconds per rank over all
    its chunks (`bwd` includes `wgrad`, which zero-bubble runs as a separate W pass). Ranks are
    advanced in order of the time they fall idle, so a pass starts as soon as both its rank and
    its input are free."""
    wgrad = wgrad or [0.0] * pp
    split = schedule == "zero_bubble"
    dur = {"F": [f / v for f in fwd], "B": [(b - (w if split else 0.0)) / v for b, w in zip(bwd, wgrad)],
           "W": [w / v for w in wgrad]}
    stages = pp * v
    orders = [rank_order(schedule, pp, v, m, r) for r in range(pp)]
    done: dict[tuple[str, int, int], float] = {}  # (kind, micro, virtual stage) -> end
    pos, free = [0] * pp, [0.0] * pp
    deferred: list[deque] = [deque() for _ in range(pp)]
    ops: list[Op] = []

    def run(r: int, kind: str, i: int, c: int, start: float) -> None:
        end = start + dur[kind][r]
        done[(kind, i, c * pp + r)] = end
        free[r] = end
        ops.append(Op(r, kind, i, c, start, end))
        if kind == "B" and split:
            deferred[r].append(i * v + c)

    def dependency(kind: str, i: int, s: int):
        if kind == "F":
            return ("F", i, s - 1) if s > 0 else None
        return ("B", i, s + 1) if s < stages - 1 else ("F", i, s)

    while any(pos[r] < len(orders[r]) for r in range(pp)):
        progressed = False
        for r in sorted(range(pp), key=lambda q: (free[q], q)):
            if pos[r] >= len(orders[r]):
                continue
            kind, i, c = orders[r][pos[r]]
            s = c * pp + r
            dep = dependency(kind, i, s)
            ready = 0.0 if dep is None else done.get(dep)
            if ready is not None and dep is not None and dep[2] != s:
                ready += p2p
            if deferred[r] and (ready is None or ready > free[r]):
                i_w, c_w = divmod(deferred[r].popleft(), v)
                run(r, "W", i_w, c_w, free[r])  # fill the wait with a deferred weight gradient
            elif ready is None:
                continue  # its input is not computed yet: another rank goes first
            else:
                run(r, kind, i, c, max(free[r], ready))
                pos[r] += 1
            progressed = True
            break
        if not progressed:
            raise RuntimeError(f"schedule {schedule} with pp={pp}, v={v}, m={m} deadlocks")
    for r in range(pp):
        while deferred[r]:
            i_w, c_w = divmod(deferred[r].popleft(), v)
            run(r, "W", i_w, c_w, free[r])
    return ops


def makespan(ops: list[Op]) -> float:
    return max(op.end for op in ops) if ops else 0.0
