"""vlac.search: grid and random strategies, ask/tell, constraints, recorded failures, reproducibility."""

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import vlac
from vlac.compiler.planner import PlanError
from vlac.compiler.planner import plan as compiler_plan
from vlac.search import CHINCHILLA, Constraint, Objective, Result, Search, SearchError
from vlac.search import results as results_mod

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = EXAMPLES / "tiny_vla.yaml"
FLAGSHIP = EXAMPLES / "vla_10b_moe_h100.yaml"
# tiny_vla pins its layout, so planning a candidate takes milliseconds
SPACE = {"moe.experts": [2, 4, 8], "moe.top_k": [1, 4], "backbone.layers": [1, 2]}


@pytest.fixture(scope="module")
def grid():
    return vlac.search(TINY, SPACE, objective="max:tokens_per_s", constraints=["params_active <= 130k"],
                       workers=1, progress=False)


def test_grid_covers_the_space_in_order(grid):
    assert len(grid.results) == 12
    assert [r.params for r in grid.ordered()][:3] == [
        {"moe.experts": 2, "moe.top_k": 1, "backbone.layers": 1},
        {"moe.experts": 2, "moe.top_k": 1, "backbone.layers": 2},
        {"moe.experts": 2, "moe.top_k": 4, "backbone.layers": 1}]


def test_failures_are_recorded_with_reasons(grid):
    invalid = [r for r in grid.ordered() if r.status == "invalid"]
    # top_k 4 over 2 experts breaks a spec rule: recorded, with the field and the fix
    assert {(r.params["moe.experts"], r.params["moe.top_k"]) for r in invalid} == {(2, 4)}
    assert all("moe.top_k" in r.reason and "exceeds experts 2" in r.reason for r in invalid)
    assert all(r.objective is None and not r.metrics for r in invalid)


def test_constraints_are_respected(grid):
    ok = [r for r in grid.ordered() if r.ok]
    rejected = [r for r in grid.ordered() if r.status == "rejected"]
    assert ok and rejected
    assert all(r.metrics["params_active"] <= 130_000 for r in ok)
    assert all(r.metrics["params_active"] > 130_000 and "violates params_active <= 130k" in r.reason for r in rejected)
    best = grid.best
    assert best.ok and best.objective == max(r.objective for r in ok)
    assert best.objective == best.metrics["tokens_per_s"]


def test_pareto_front_is_not_dominated(grid):
    front = grid.pareto()
    ok = [r for r in grid.ordered() if r.ok]
    assert front
    for f in front:
        assert not any(r.metrics["params_active"] >= f.metrics["params_active"]
                       and r.metrics["tokens_per_s"] >= f.metrics["tokens_per_s"]
                       and (r.metrics["params_active"], r.metrics["tokens_per_s"])
                       != (f.metrics["params_active"], f.metrics["tokens_per_s"]) for r in ok)


def test_infeasible_and_errors_are_results_not_crashes(monkeypatch):
    s = Search(TINY, {"cluster.gpu.memory": ["80GB", "1MB"]}, objective=("max", lambda exp, plan: 1 / 0))
    s.run(workers=1, progress=False)
    fits, tiny_memory = s.ordered()
    assert fits.status == "error" and "ZeroDivisionError" in fits.reason and fits.metrics
    assert tiny_memory.status == "infeasible" and "GB" in tiny_memory.reason

    def no_layout(*args, **kwargs):
        raise PlanError("no legal layout of 2 GPUs")
    monkeypatch.setattr(s.evaluator, "planner", no_layout)
    r = s.evaluate(s.candidate({"moe.experts": 8}))
    assert r.status == "infeasible" and "no legal layout" in r.reason

    def broken_lowering(exp, **kwargs):
        raise RuntimeError("tracing failed")
    monkeypatch.setattr(s.evaluator.cache, "lower", broken_lowering)
    r = s.evaluate(s.candidate({"moe.experts": 16}))
    assert r.status == "error" and "RuntimeError: tracing failed" in r.reason


def _random(seed, workers=1):
    space = {"moe.experts": [2, 4, 8], "moe.top_k": [1, 2], "backbone.layers": {"range": [1, 3]},
             "optimizer.lr": {"range": [1e-4, 1e-2], "log": True}}
    return vlac.search(TINY, space, strategy="random", budget=5, seed=seed, workers=workers, progress=False)


def test_same_seed_same_result():
    a, b = _random(3), _random(3)
    assert json.dumps(results_mod.results_json(a)) == json.dumps(results_mod.results_json(b))
    assert [r.params for r in _random(4).ordered()] != [r.params for r in a.ordered()]
    lrs = [r.params["optimizer.lr"] for r in a.ordered()]
    assert all(1e-4 <= x <= 1e-2 for x in lrs) and len(set(lrs)) == 5
    assert all(r.params["backbone.layers"] in (1, 2, 3) for r in a.ordered())


def test_results_do_not_depend_on_the_number_of_workers():
    space = {"moe.experts": [2, 4], "backbone.layers": [1, 2]}
    serial = vlac.search(FLAGSHIP, space, profile="tiny", workers=1, progress=False)
    parallel = vlac.search(FLAGSHIP, space, profile="tiny", workers=2, progress=False)
    assert json.dumps(results_mod.results_json(serial)) == json.dumps(results_mod.results_json(parallel))


def test_random_search_stops_when_a_small_space_is_exhausted():
    s = Search(TINY, {"moe.experts": [2, 4]}, strategy="random", budget=10, seed=0)
    s.run(workers=1, progress=False)
    assert sorted(r.params["moe.experts"] for r in s.ordered()) == [2, 4]


def test_ask_tell_for_a_users_optimiser():
    s = Search(TINY, {"moe.experts": [2, 4, 8]}, objective="min:step_time_s", constraints=["fits", "gpus <= 2"])
    first = s.ask()
    assert first.index == 0 and first.params == {"moe.experts": 2}
    s.tell(first, s.evaluate(first))
    mine = s.candidate({"moe.experts": 16, "moe.top_k": 1})  # any field, not only the space's
    s.tell(mine, s.evaluate(mine))
    assert s.candidate({"moe.experts": 16, "moe.top_k": 1}) is mine
    while (c := s.ask()) is not None:
        s.tell(c, s.evaluate(c))
    assert sorted(r.params.get("moe.experts") for r in s.ordered()) == [2, 4, 8, 16]
    assert s.best is not None and s.best.objective == min(r.objective for r in s.ordered() if r.ok)
    with pytest.raises(SearchError, match="not the result of candidate"):
        s.tell(first, Result(mine.index, mine.params, "ok"))


def test_user_functions_and_plan_paths():
    def pipeline_free(exp, plan):
        return plan.to_json()["plan"]["pp"] == 1

    s = vlac.search(TINY, {"moe.experts": [2, 4]}, objective=Objective.parse(("min", lambda exp, plan: exp.moe.experts)),
                    constraints=[pipeline_free, "plan.tp == 1", "spec.backbone.hidden >= 64", "peak_memory_gb < 80"],
                    workers=1, progress=False)
    assert s.best.params == {"moe.experts": 2} and s.best.objective == 2.0


@pytest.mark.parametrize("kwargs, message", [
    ({"space": {"moe.expert": [2]}}, "did you mean 'experts'"),
    ({"space": {"backbone.layers.x": [2]}}, "not a section"),
    ({"space": {"optimizer.lr": {"range": [1e-4, 1e-3]}}, "strategy": "grid"}, "continuous range"),
    ({"space": {"optimizer.lr": {"range": [1e-4, 1e-3]}}}, "needs a budget"),
    ({"space": {"a,b": [[1]]}}, "each value must be a list of 2"),
    ({"objective": "max:tokenz"}, "not a metric"),
    ({"objective": "params_active"}, "write min:params_active or max:params_active"),
    ({"constraints": ["params_active 3B"]}, "no operator"),
    ({"constraints": ["params_active <= lots"]}, "not a number"),
    ({"strategy": "bayes"}, "choose one of: grid, random, tpe, cmaes, nsga2"),
    ({"strategy": "tpe"}, "a tpe search needs a budget"),
    ({"pareto_epsilon": -0.1}, "non-negative relative tolerance"),
])
def test_bad_definitions_say_what_to_fix(kwargs, message):
    args = {"space": {"moe.experts": [2]}, **kwargs}
    with pytest.raises(SearchError, match=message):
        Search(TINY, **args)


def test_unknown_plan_field_stops_the_search():
    with pytest.raises(SearchError, match="plan JSON"):
        vlac.search(TINY, {"moe.experts": [2]}, objective="max:predicted.no_such_field", workers=1, progress=False)


def test_write_produces_a_compilable_best_spec_and_a_picture(grid, tmp_path):
    paths = grid.write(tmp_path)
    assert sorted(p.name for p in paths.values()) == sorted(results_mod.FILES)
    best = vlac.load(paths["best.yaml"])
    assert best.moe.experts == grid.best.params["moe.experts"]
    # the search plans with the compiler's planner (the CLI passes vlac.plan, which adds the kernels)
    assert json.loads(paths["best_plan.json"].read_text()) == compiler_plan(best).to_json()
    rows = paths["results.csv"].read_text().splitlines()
    assert len(rows) == 1 + len(grid.results) and rows[0].startswith("index,status,objective")
    svg = ET.parse(paths["pareto.svg"]).getroot()
    circles = svg.findall(".//{http://www.w3.org/2000/svg}circle")
    assert len(circles) >= sum(r.status in ("ok", "rejected") for r in grid.results.values())
    before = {p.name: p.read_bytes() for p in paths.values()}
    grid.write(tmp_path)  # byte-identical for the same search
    assert before == {p.name: p.read_bytes() for p in paths.values()}


def test_chinchilla_law_and_its_compute_optimum():
    # Hoffmann et al. 2022, sec. 3.3: E + A / N^alpha + B / D^beta
    assert CHINCHILLA.loss(70e9, 1.4e12) == pytest.approx(1.69 + 406.4 / 70e9 ** 0.34 + 410.7 / 1.4e12 ** 0.28)
    flops = 5.76e23
    n = CHINCHILLA.optimal_params(flops)
    on_budget = [CHINCHILLA.loss(k * n, flops / (6 * k * n)) for k in (0.8, 1.0, 1.25)]
    assert on_budget[1] < on_budget[0] and on_budget[1] < on_budget[2]
    assert math.isclose(n, 10 ** 10.5, rel_tol=0.5)  # tens of billions for Gopher's budget


def test_constraint_values_read_units():
    assert Constraint.parse("params_active <= 3B").value == 3_000_000_000
    assert Constraint.parse("gpus<=128").value == 128
    assert Constraint.parse("plan.schedule != 1f1b").value == "1f1b"


def test_chunks_keep_a_family_and_its_token_budgets_together():
    # workers plan a candidate's layout once for every token budget: the budgets of one shape
    # must land in one chunk, and a chunk must hold one lowered-graph family only
    from vlac.search.pool import _chunks
    from vlac.search.space import Candidate

    cands = [Candidate(i, {"moe.experts": e, "backbone.layers": d, "train.total_tokens": t})
             for i, (t, d, e) in enumerate((t, d, e) for t in ("1T", "2T") for d in range(8, 40) for e in (8, 16))]
    chunks = _chunks(cands, workers=2)
    assert sorted(c.index for ch in chunks for c in ch) == list(range(len(cands)))
    for ch in chunks:
        assert len({c.params["moe.experts"] for c in ch}) == 1
    where = {c.index: n for n, ch in enumerate(chunks) for c in ch}
    for c in cands[: len(cands) // 2]:
        sibling = next(s for s in cands if s.params == {**c.params, "train.total_tokens": "2T"})
        assert where[c.index] == where[sibling.index], c.params
