"""The planner on the example specs: a legal, fitting, explained plan; pins; infeasible clusters;
the --json contract; determinism."""

import json
from pathlib import Path

import pytest

import vlac
from vlac.compiler.planner import PIN_KEYS, PlanError
from vlac.spec.system import Cluster

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
FLAGSHIP = ROOT / "examples" / "vla_10b_moe_h100.yaml"


@pytest.fixture(scope="module")
def flagship():
    exp = vlac.load(FLAGSHIP)
    return exp, vlac.lower(exp)


@pytest.fixture(scope="module")
def flagship_plan(flagship):
    exp, g = flagship
    return vlac.plan(exp, graph=g)


def assert_legal(exp, lay, cluster=None):
    """The runtime's rules, written out independently of the search space."""
    cluster = cluster or exp.cluster
    bb = exp.backbone
    assert lay.dp * lay.tp * lay.pp * lay.cp == cluster.world_size
    assert cluster.gpus_per_node % lay.tp == 0
    assert bb.heads % lay.tp == 0 and bb.n_kv_heads % lay.tp == 0
    assert exp.train.seq_len % (2 * lay.cp) == 0 or lay.cp == 1
    assert exp.train.global_batch == lay.dp * lay.microbatch_size * lay.num_microbatches
    assert lay.pp * lay.virtual_stages <= bb.layers
    if lay.pp > 1:
        assert lay.num_microbatches >= lay.pp or lay.schedule == "gpipe"
    if lay.schedule == "interleaved_1f1b":
        assert lay.num_microbatches % lay.pp == 0 and lay.virtual_stages > 1
    if exp.moe:
        assert exp.moe.experts % lay.ep == 0
        assert (lay.tp * lay.cp * lay.dp) % (lay.ep * lay.etp) == 0
        assert lay.tp == 1 or lay.sequence_parallel
    else:
        assert lay.ep == 1 and lay.etp == 1
    assert lay.sequence_parallel is False or lay.tp > 1
    assert len(lay.recompute_per_stage) == lay.pp


def test_flagship_plan_is_legal_fits_and_explains(flagship, flagship_plan):
    exp, _ = flagship
    p = flagship_plan
    assert p.feasible
    assert_legal(exp, p.best.layout)
    assert p.best.peak_memory <= p.cluster["usable_memory_gb"] * 1e9 < 80e9
    j = p.to_json()
    for key in ("dp", "tp", "pp", "ep", "cp", "zero", "microbatch_size", "num_microbatches", "schedule", "recompute",
                "sequence_parallel", "virtual_stages", "fp8", "mesh_order", "stage_split"):
        assert key in j["plan"]
    for key in ("step_time_s", "tokens_per_s", "mfu", "tflops_per_gpu", "peak_memory_gb", "training_days", "gpu_hours"):
        assert j["predicted"][key] > 0
    # an MoE of 2.4B active parameters with h=2560 is memory-bound in places: well below 50 % MFU
    assert 0.2 < j["predicted"]["mfu"] < 0.5
    assert j["fp8"]["enabled"] and j["fp8"]["predicted_speedup"] > 1
    assert j["alternatives"] and all(alt["fits"] for alt in j["alternatives"])
    assert p.rejected and p.evaluated > 10_000
    assert j["search"]["legal"] == p.evaluated + p.pruned
    assert sum(j["predicted"]["time_s"].values()) == pytest.approx(j["predicted"]["step_time_s"])
    mem = j["predicted"]["memory_gb"]
    assert sum(v for k, v in mem.items() if k != "total") == pytest.approx(mem["total"])


def test_alternatives_are_legal_and_not_faster(flagship, flagship_plan):
    exp, _ = flagship
    for alt in flagship_plan.alternatives:
        assert_legal(exp, alt.layout)
        assert alt.step_time_s >= flagship_plan.best.step_time_s


def test_rejections_closest_first_with_numbers(flagship_plan):
    fits = [r for r in flagship_plan.rejected if r["fits"]]
    over = [r for r in flagship_plan.rejected if not r["fits"]]
    assert flagship_plan.rejected[:len(fits)] == fits  # families that fit come first
    assert [r["slower_pct"] for r in fits] == sorted(r["slower_pct"] for r in fits)
    assert [r["over_memory_gb"] for r in over] == sorted(r["over_memory_gb"] for r in over)
    assert all("%" in r["reason"] for r in fits) and all("GB" in r["reason"] for r in over)


def test_same_input_same_json(flagship, flagship_plan):
    exp, _ = flagship
    a = json.dumps(flagship_plan.to_json(), sort_keys=True)
    b = json.dumps(vlac.plan(exp).to_json(), sort_keys=True)  # lowered again
    assert a == b


@pytest.mark.parametrize("pin", [{"tp": 2, "pp": 4, "recompute": "full"}, {"ep": 8}, {"microbatch_size": 1},
                                 {"schedule": "1f1b", "pp": 2}, {"zero": 3}, {"cp": 2, "sequence_parallel": True},
                                 {"virtual_stages": 3}, {"etp": 2, "tp": 2}, {"schedule": "zero_bubble"},
                                 {"zero": 3, "reshard_after_forward": False}])
def test_pins_are_respected(flagship, pin):
    exp, g = flagship
    p = vlac.plan(exp, graph=g, pin=pin)
    lay = p.chosen.layout
    got = {"tp": lay.tp, "pp": lay.pp, "ep": lay.ep, "cp": lay.cp, "zero": lay.zero, "microbatch_size": lay.microbatch_size,
           "schedule": lay.schedule, "virtual_stages": lay.virtual_stages, "recompute": lay.recompute, "etp": lay.etp,
           "sequence_parallel": lay.sequence_parallel, "reshard_after_forward": lay.reshard_after_forward}
    assert {k: got[k] for k in pin} == pin
    assert_legal(exp, lay)
    if "recompute" in pin:
        assert set(lay.recompute_per_stage) == {pin["recompute"]}
    assert p.pin_notes and "pins" in p.pin_notes[0]


def test_bad_pins_name_the_rule_and_valid_values(flagship):
    exp, g = flagship
    with pytest.raises(PlanError, match="valid pins"):
        vlac.plan(exp, graph=g, pin={"tensor": 2})
    with pytest.raises(PlanError, match=r"no legal layout.*valid tp values on 256 GPUs: \[1, 2, 4\]"):
        vlac.plan(exp, graph=g, pin={"tp": 3})
    with pytest.raises(PlanError, match="choose one of"):
        vlac.plan(exp, graph=g, pin={"schedule": "dualpipe"})
    with pytest.raises(PlanError, match="do not combine"):
        vlac.plan(exp, graph=g, pin={"tp": 4, "cp": 16, "pp": 16, "dp": 2})
    assert set(PIN_KEYS) >= {"dp", "tp", "pp", "ep", "cp", "zero", "microbatch_size", "schedule", "recompute"}


def test_infeasible_cluster_gives_closest_plan_and_advice(flagship):
    exp, g = flagship
    small = Cluster.model_validate({"preset": "h100-sxm", "nodes": 1, "gpus_per_node": 1, "gpu": {"memory": "16GB"}})
    p = vlac.plan(exp, cluster=small, graph=g)
    assert not p.feasible and p.closest is not None
    assert p.closest.peak_memory > p.cluster["usable_memory_gb"] * 1e9
    assert p.advice[0].startswith("nothing fits")
    assert any(tip.startswith("add nodes") for tip in p.advice)
    j = p.to_json()
    assert j["feasible"] is False and j["advice"]


def test_pins_that_cannot_fit_say_what_would(flagship):
    exp, g = flagship
    p = vlac.plan(exp, graph=g, pin={"recompute": "none", "microbatch_size": 4, "pp": 1, "cp": 1, "tp": 1})
    assert not p.feasible
    assert any("smaller micro-batch" in tip and "fits" in tip for tip in p.advice)
    assert any(tip.startswith("drop the pins") for tip in p.advice)


def test_recompute_only_when_needed():
    exp = vlac.load(TINY)
    p = vlac.plan(exp)
    assert p.best.layout.recompute == "none"  # a tiny model fits without recompute
    assert (p.best.layout.dp, p.best.layout.zero) == (2, 0)  # pinned in the spec


def test_fp8_off_on_a100_with_reason(flagship):
    exp, g = flagship
    a100 = Cluster.model_validate({"preset": "a100-80gb", "nodes": 32, "gpus_per_node": 8})
    p = vlac.plan(exp, cluster=a100, graph=g)
    assert p.feasible and not p.chosen.layout.fp8
    assert "no FP8" in p.fp8["off_reason"] and "predicted_speedup" not in p.fp8
    assert all(not d["fp8"] for d in p.fp8["gemms"])


def test_report_pictures_are_valid_and_deterministic(flagship, tmp_path):
    import xml.etree.ElementTree as ET

    from vlac.compiler.plan_report import write_plan_pictures
    from vlac.report import plan_text

    exp, g = flagship
    p = vlac.plan(exp, graph=g, pin={"pp": 4, "schedule": "interleaved_1f1b"})
    first = {path.name: path.read_bytes() for path in write_plan_pictures(p, tmp_path / "a")}
    again = {path.name: path.read_bytes() for path in write_plan_pictures(p, tmp_path / "b")}
    assert first == again and set(first) == {"pipeline.svg", "memory.svg"}
    for name, data in first.items():
        root = ET.fromstring(data)
        assert root.tag.endswith("svg")
    pipeline = ET.fromstring(first["pipeline.svg"])
    passes = [r for r in pipeline.iter("{http://www.w3.org/2000/svg}rect") if r.get("fill") in ("#4C78A8", "#54A24B")]
    lay = p.chosen.layout
    assert len(passes) == 2 * lay.num_microbatches * lay.virtual_stages * lay.pp + 2  # + the two legend swatches
    bars = [r for r in ET.fromstring(first["memory.svg"]).iter("{http://www.w3.org/2000/svg}rect") if r.find(
        "{http://www.w3.org/2000/svg}title") is not None]
    assert {b.find("{http://www.w3.org/2000/svg}title").text.split()[1] for b in bars} == {"0", "1", "2", "3"}
    text = plan_text(p)
    for heading in ("Memory per GPU", "Step time", "MFU", "tokens/s", "GPU-hours", "Pipeline ranks", "Rejected families"):
        assert heading in text
