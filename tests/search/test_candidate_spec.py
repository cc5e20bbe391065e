"""A candidate's spec (vlac.search.evaluate.Evaluator.experiment) is validated without the
loader's deep copy: it must equal what the loader gives, leave the shared base spec as it was,
report an invalid candidate as the loader does, and keep the loader's input bounds. These
guard a speed-up: each held before it and must keep holding."""

import copy
from pathlib import Path

import pytest

from vlac.search import Search
from vlac.spec import SpecError, load

FLAGSHIP = Path(__file__).resolve().parents[2] / "examples" / "vla_10b_moe_h100.yaml"


@pytest.fixture()
def evaluator():
    return Search(FLAGSHIP, {"moe.experts": [2, 4]}, profile="tiny").evaluator


def test_a_candidate_equals_the_loaders_and_the_base_stays_unchanged(evaluator):
    base = copy.deepcopy(evaluator.base)
    params = {"moe.experts": 8, "moe.top_k": 2, "backbone.layers": 5, "train.total_tokens": "1B",
              "cluster.gpu.memory": "40GB"}
    exp = evaluator.experiment(params)
    data = copy.deepcopy(base)
    data["moe"].update(experts=8, top_k=2)
    data["backbone"]["layers"] = 5
    data["train"]["total_tokens"] = "1B"
    data["cluster"].setdefault("gpu", {})["memory"] = "40GB"
    assert exp == load(data)
    assert exp.cluster.gpu.memory != load(base).cluster.gpu.memory
    assert evaluator.base == base  # nothing written through to the shared base


def test_an_invalid_candidate_is_reported_as_the_loader_reports_it(evaluator):
    with pytest.raises(SpecError) as ours:
        evaluator.experiment({"backbone.heads": 3})
    data = copy.deepcopy(evaluator.base)
    data["backbone"]["heads"] = 3
    with pytest.raises(SpecError) as loaders:
        load(data)
    assert str(ours.value) == str(loaders.value) and "backbone" in str(ours.value)


def test_a_candidate_value_past_the_input_bounds_is_refused(evaluator):
    with pytest.raises(SpecError, match="characters"):
        evaluator.experiment({"description": "x" * 20_000})
