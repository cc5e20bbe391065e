"""Evaluating many candidates: in this process, or on a pool of processes (one per core by
default) with a rich progress bar. Candidates that share a lowered-graph family go to the same
worker, so each family is lowered once per worker; with forked workers, the first candidate of
each family with others is evaluated here first, so its architecture is lowered once in all and
inherited (the README's search on 2 workers: 9.5 s, against 5.6 s on one, before; lowering is most
of a small search). Results come back in candidate order, so they do not depend on the number of
workers."""

from __future__ import annotations

import contextlib
import gc
import math
import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterator, Mapping, Sequence

from vlac.compiler.graph_cache import PER_LAYER_FIELDS, PLAN_ONLY_FIELDS

from .evaluate import Evaluator, Result
from .fast import STEPS_FIELDS
from .space import Candidate, SearchError, params_key

_WORKER: Evaluator | None = None


def _init_worker(evaluator: Evaluator) -> None:
    global _WORKER
    import torch

    torch.set_num_threads(1)  # one process per core; intra-op threads would oversubscribe
    _WORKER = evaluator  # forked: with the parent's lowered architectures; spawned: with empty caches
    gc.freeze()  # the worker's heap as it starts, out of every collection (frozen_heap)


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """The objects alive now (torch's ~330,000 among them) left out of garbage collections
    while this lasts (gc.freeze), unfrozen after. Evaluation allocates many short-lived arrays
    and dicts, and each full collection they trigger walks every object alive: on the README's
    search 0.02-0.4 CPU s went to collections, depending on where they fell. A heap already
    frozen (a caller's own) is left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _run_chunk(chunk: list[Candidate]) -> list[Result]:
    assert _WORKER is not None
    return _WORKER.evaluate_many(chunk)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


STEPS_PATHS = tuple(f"train.{f}" for f in STEPS_FIELDS)


def _family(params: Mapping[str, Any]) -> str:
    """Candidates that share a lowered graph family (differing only in depth-like or plan-only
    fields) go to the same worker, so each family is lowered once."""
    derivable = PER_LAYER_FIELDS + PLAN_ONLY_FIELDS
    kept = {p: v for p, v in params.items() if not any(p == f or p.startswith(f + ".") for f in derivable)}
    return params_key(kept)


def _chunks(cands: Sequence[Candidate], workers: int) -> list[list[Candidate]]:
    groups: dict[str, list[Candidate]] = {}
    for c in cands:
        groups.setdefault(_family(c.params), []).append(c)
    for g in groups.values():  # candidates differing only in the number of steps share a plan: one chunk
        g.sort(key=lambda c: params_key({p: v for p, v in c.params.items() if p not in STEPS_PATHS}))
    size = max(1, min(16, math.ceil(len(cands) / (4 * workers))))
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def _warm_up(evaluator: Evaluator, cands: Sequence[Candidate], bar: Progress | None,
             arrived: Callable[[Sequence[Result]], None]) -> list[Candidate]:
    """Evaluates here the first candidate of every family that has others, and returns the
    candidates left for the workers. A family's first candidate lowers (or combines) its
    architecture's reference graphs, the costly part, and a worker repeats it for every family
    it is handed (and its topology's basis shapes, vlac.search.shape_fit): done once here,
    every forked worker inherits them and only costs layouts."""
    firsts: dict[str, Candidate] = {}
    shared: set[str] = set()
    for c in cands:
        fam = _family(c.params)
        if fam in firsts:
            shared.add(fam)
        else:
            firsts[fam] = c
    warm = [c for fam, c in firsts.items() if fam in shared]
    if not warm:
        return list(cands)
    if bar is not None:
        bar.start()
    with frozen_heap():
        for c in warm:
            arrived(evaluator.evaluate_many([c]))
    done = {c.index for c in warm}
    return [c for c in cands if c.index not in done]


def evaluate_all(evaluator: Evaluator, cands: Sequence[Candidate], workers: int | None = None,
                 bar: Progress | None = None, on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Evaluate candidates, in parallel when `workers` > 1; results in candidate order.
    `on_result` sees each result as it comes in, then `bar` advances. Candidates of one
    architecture go to one worker as far as the chunking allows, so each worker lowers few."""
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise SearchError(f"workers must be at least 1, got {workers}")
    done: list[Result] = []

    def arrived(results: Sequence[Result]) -> None:
        done.extend(results)
        for r in results:
            if on_result is not None:
                on_result(r)
        if bar is not None:
            bar.advance(len(results))

    workers = min(workers, max(1, len(cands)))
    if workers == 1:
        if bar is not None:
            bar.start()
        with frozen_heap():
            for c in cands:
                arrived(evaluator.evaluate_many([c]))
        return sorted(done, key=lambda r: r.index)
    # fork shares the parent's imported torch and any user functions; spawn re-imports
    start = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    if start == "fork":
        cands = _warm_up(evaluator, cands, bar, arrived)
        if not cands:
            return sorted(done, key=lambda r: r.index)
    if bar is not None:
        bar.pause()  # the display thread must not be forked (workers start on the first submit)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(start), initializer=_init_worker,
                             initargs=(evaluator,)) as pool:
        futures = [pool.submit(_run_chunk, chunk) for chunk in _chunks(cands, workers)]
        if bar is not None:
            bar.start()
        try:
            for fut in as_completed(futures):
                arrived(fut.result())
        except BaseException:  # a definition error in a worker, or Ctrl-C: drop what has not started
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return sorted(done, key=lambda r: r.index)


class Progress:
    """A live rich progress bar on stderr with the best result so far (`status()`), shown when
    `show` is true, or when it is None and stderr is a terminal; otherwise nothing."""

    def __init__(self, show: bool | None, total: int | None, status: Callable[[], str] | None = None):
        self.show = sys.stderr.isatty() if show is None else show
        self.total, self.status = total, status
        self._bar = None
        self._task = None
        self._completed = 0

    def __enter__(self) -> Progress:
        return self

    def start(self) -> None:
        if not self.show or self._bar is not None:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TextColumn("{task.description}"), console=Console(stderr=True), transient=False)
        self._bar.start()
        self._task = self._bar.add_task("", total=self.total, completed=self._completed)

    def pause(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def advance(self, n: int) -> None:
        self._completed += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self._completed,
                             description=self.status() if self.status else "")

    def __exit__(self, *exc) -> None:
        self.pause()


__all__ = ["Progress", "default_workers", "evaluate_all"]
