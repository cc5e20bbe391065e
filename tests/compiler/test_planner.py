import json
from pathlib import Path

import pytest

import vlac
from vlac.compiler.planner import PlanError
from vlac.spec.system import Cluster

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
FLAGSHIP = ROOT / "examples" / "vla_10b_moe_h100.yaml"


@pytest.fixture(scope="module")
def flagship():
    exp = vlac.load(FLAGSHIP)
    return exp, vlac.lower(exp)


def _legal(exp, lay):
    bb = exp.backbone
    assert lay.dp * lay.tp * lay.pp * lay.cp == exp.cluster.world_size
    assert bb.heads % lay.tp == 0 and bb.n_kv_heads % lay.tp == 0
    assert exp.moe.experts % lay.ep == 0 and (lay.dp * lay.cp) % lay.ep == 0
    assert exp.train.global_batch == lay.dp * lay.microbatch_size * lay.num_microbatches
    assert lay.tp <= exp.cluster.gpus_per_node


def test_flagship_plan_is_legal_fits_and_explains(flagship):
    exp, g = flagship
    p = vlac.plan(exp, graph=g)
    assert p.feasible
    _legal(exp, p.best.layout)
    assert p.best.peak_memory <= 80e9
    j = p.to_json()
    for key in ("dp", "tp", "pp", "ep", "cp", "microbatch_size", "num_microbatches", "schedule", "recompute",
                "sequence_parallel"):
        assert key in j["plan"]
    for key in ("step_time_s", "tokens_per_s", "mfu", "tflops_per_gpu", "peak_memory_gb"):
        assert j["predicted"][key] > 0
    assert 0 < j["predicted"]["mfu"] < 1
    assert j["fp8"]["enabled"] and j["fp8"]["predicted_speedup"] > 1
    assert isinstance(j["alternatives"], list) and j["alternatives"]
    assert all(alt["fits"] for alt in j["alternatives"])
    assert p.evaluated > 100 and p.rejected


def test_alternatives_are_legal_and_not_faster(flagship):
    exp, g = flagship
    p = vlac.plan(exp, graph=g)
    for alt in p.alternatives:
        _legal(exp, alt.layout)
        assert alt.step_time_s >= p.best.step_time_s


def test_same_input_same_json(flagship):
    exp, g = flagship
    a = json.dumps(vlac.plan(exp, graph=g).to_json(), sort_keys=True)
    b = json.dumps(vlac.plan(exp).to_json(), sort_keys=True)
    assert a == b


def test_pins_are_respected(flagship):
    exp, g = flagship
    p = vlac.plan(exp, graph=g, pin={"tp": 2, "pp": 4, "recompute": "full"})
    lay = p.chosen.layout
    assert (lay.tp, lay.pp, lay.recompute) == (2, 4, "full")


def test_bad_pins_say_which_keys_exist(flagship):
    exp, g = flagship
    with pytest.raises(PlanError, match="valid pins"):
        vlac.plan(exp, graph=g, pin={"tensor": 2})
    with pytest.raises(PlanError, match="no legal layout"):
        vlac.plan(exp, graph=g, pin={"tp": 3})


def test_infeasible_cluster_gives_closest_plan_and_advice(flagship):
    exp, g = flagship
    small = Cluster.model_validate({"preset": "h100-sxm", "nodes": 1, "gpus_per_node": 1, "gpu": {"memory": "16GB"}})
    p = vlac.plan(exp, cluster=small, graph=g)
    assert not p.feasible and p.closest is not None
    assert any("add nodes" in tip for tip in p.advice)
    assert p.rejected and "over memory" in p.rejected[0]["reason"]


def test_recompute_only_when_needed():
    exp = vlac.load(TINY)
    p = vlac.plan(exp)
    assert p.best.layout.recompute == "none"  # a tiny model fits without recompute
    assert (p.best.layout.dp, p.best.layout.zero) == (2, 0)  # pinned in the spec
