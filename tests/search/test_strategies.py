"""Optuna's samplers behind vlac's ask/tell, the thinned Pareto front and the Parquet table."""

import json
from pathlib import Path

import pytest

import vlac
from vlac.search import Search, pareto_front
from vlac.search import results as results_mod

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"
SPACE = {"moe.experts": [2, 4, 8, 16], "moe.top_k": [1, 2], "backbone.layers": {"range": [1, 4]},
         "optimizer.lr": {"range": [1e-4, 1e-2], "log": True}}


def _run(strategy, seed=0, budget=6, **kwargs):
    return vlac.search(TINY, SPACE, strategy=strategy, budget=budget, seed=seed, workers=1, progress=False, **kwargs)


@pytest.mark.parametrize("strategy", ["tpe", "cmaes", "nsga2"])
def test_optuna_samplers_are_seeded_and_reproducible(strategy):
    a, b = _run(strategy, seed=3, budget=4), _run(strategy, seed=3, budget=4)
    assert json.dumps(results_mod.results_json(a)) == json.dumps(results_mod.results_json(b))
    assert len(a.results) == 4 and len({json.dumps(r.params, sort_keys=True) for r in a.ordered()}) == 4
    for r in a.ordered():  # every proposal lies in the space
        assert r.params["moe.experts"] in (2, 4, 8, 16) and 1 <= r.params["backbone.layers"] <= 4
        assert 1e-4 <= r.params["optimizer.lr"] <= 1e-2
    assert [r.params for r in _run(strategy, seed=4, budget=4).ordered()] != [r.params for r in a.ordered()]


def test_constraints_reach_optuna_as_constraints_func():
    s = _run("tpe", budget=12, constraints=["params_active <= 130k"])
    trials = s._strategy.study.trials
    told = [t for t in trials if t.state.name == "COMPLETE"]
    assert told and all(len(t.user_attrs["constraints"]) == 1 for t in told)
    for t in told:  # <= 0 exactly when the candidate's constraint holds
        r = next(r for r in s.ordered() if r.objective == t.value)
        assert (t.user_attrs["constraints"][0] <= 0) == r.ok
        if s._strategy.set_constraint:  # Optuna 5: where its samplers read them
            assert t.system_attrs["constraints:c0"] == t.user_attrs["constraints"][0]
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == sum(r.status in ("invalid", "infeasible", "error") for r in s.ordered())


def test_nsga2_optimises_the_pareto_axes():
    s = _run("nsga2", budget=8, pareto=("max:params_active", "min:step_time_s"))
    assert s._strategy.study.directions[0].name == "MAXIMIZE" and s._strategy.study.directions[1].name == "MINIMIZE"
    done = [t for t in s._strategy.study.trials if t.state.name == "COMPLETE"]
    assert done and all(len(t.values) == 2 for t in done)


def test_pareto_front_drops_near_duplicates_only():
    pts = [(1.0, 10.0), (1.001, 9.995), (2.0, 5.0), (3.0, 1.0), (2.5, 6.0)]  # minimised on both
    exact = pareto_front(pts, lambda p: p)
    assert exact == [(1.0, 10.0), (1.001, 9.995), (2.0, 5.0), (3.0, 1.0)]  # (2.5, 6) is dominated by (2, 5)
    thinned = pareto_front(pts, lambda p: p, epsilon=(0.01, 0.01))
    assert thinned == [(1.0, 10.0), (2.0, 5.0), (3.0, 1.0)]
    assert pareto_front(pts, lambda p: p, epsilon=(0.01, 0.0)) == exact  # not within epsilon on every axis


def test_results_parquet_matches_the_csv_and_is_byte_identical(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    s = _run("random")
    paths = s.write(tmp_path)
    table = pq.read_table(paths["results.parquet"])
    assert table.num_rows == len(s.results)
    assert table.column("index").to_pylist() == [r.index for r in s.ordered()]
    assert table.column("tokens_per_s").to_pylist() == [r.metrics.get("tokens_per_s") for r in s.ordered()]
    assert table.schema.field("moe.experts").type == "int64" and table.schema.field("optimizer.lr").type == "double"
    first = paths["results.parquet"].read_bytes()
    s.write(tmp_path)
    assert paths["results.parquet"].read_bytes() == first


def test_progress_bar_shows_the_best_so_far(capsys):
    s = Search(TINY, {"moe.experts": [2, 4]}, objective="max:tokens_per_s")
    s.run(workers=1, progress=True)
    err = capsys.readouterr().err
    assert "2/2" in err and f"best tokens_per_s {s.best.objective:.4g} (#{s.best.index})" in err
