"""Before forking workers, the pool evaluates here the first candidate of every family that has
others (vlac.search.pool._warm_up): that candidate lowers its architecture, and the forked workers
inherit it instead of each lowering it again. Results do not change; singleton families (every
candidate its own architecture) are left to the workers."""

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from vlac.search import Search
from vlac.search.pool import _family, _warm_up, evaluate_all

FLAGSHIP = Path(__file__).resolve().parents[2] / "examples" / "vla_10b_moe_h100.yaml"
needs_fork = pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="warm-up applies to forked workers")


def _candidates(space):
    s = Search(FLAGSHIP, space, profile="tiny")
    cands = []
    while (c := s.ask()) is not None:
        cands.append(c)
    return s, cands


@needs_fork
def test_each_familys_first_candidate_is_evaluated_here_before_the_workers_start():
    s, cands = _candidates({"moe.experts": [2, 4], "backbone.layers": [1, 2, 3]})
    arrivals = []
    results = evaluate_all(s.evaluator, cands, workers=2, on_result=lambda r: arrivals.append(r.index))
    firsts = {}
    for c in cands:
        firsts.setdefault(_family(c.params), c.index)
    assert arrivals[:2] == sorted(firsts.values())  # experts=2 layers=1, then experts=4 layers=1
    assert s.evaluator.cache.stats.lowered >= 1  # the parent lowered them: forked workers inherit its caches
    serial = Search(FLAGSHIP, {"moe.experts": [2, 4], "backbone.layers": [1, 2, 3]}, profile="tiny").run(
        workers=1, progress=False)
    assert [r.index for r in results] == list(range(len(cands)))
    for a, b in zip(results, serial.ordered()):
        assert (a.status, a.layout, json.dumps(a.metrics, sort_keys=True)) == \
            (b.status, b.layout, json.dumps(b.metrics, sort_keys=True))


def test_singleton_families_are_all_left_to_the_workers():
    s, cands = _candidates({"moe.experts": [2, 4, 8]})  # three architectures, one candidate each
    left = _warm_up(s.evaluator, cands, None, lambda results: pytest.fail("nothing is evaluated here"))
    assert [c.index for c in left] == [c.index for c in cands]
