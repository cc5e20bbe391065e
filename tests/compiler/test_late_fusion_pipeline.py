"""Late fusion under pipeline parallelism: the runtime sends the media entries along with the
hidden state (runtime/parallel/pipeline.py), so the cost model charges their bytes on every
stage-to-stage send, and the planner may choose such layouts."""

from pathlib import Path

import pytest

import vlac
from vlac.compiler import planner
from vlac.compiler.hardware import Hardware

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PINS = {"pp": 2, "tp": 1, "cp": 1, "schedule": "1f1b", "microbatch_size": 1}


def test_media_entries_count_each_media_modalitys_entries_or_its_resampler_queries():
    coca = vlac.load(EXAMPLES / "coca.yaml", [], "tiny")
    assert planner.media_entries(coca) == coca.modalities["image"].tokens == 16
    flamingo = vlac.load(EXAMPLES / "flamingo.yaml", [], "tiny")
    assert planner.media_entries(flamingo) == 4  # the resampler's queries, not its 16 inputs
    assert planner.media_entries(vlac.load(EXAMPLES / "tiny_vla.yaml")) == 0  # early fusion


def test_pipeline_sends_charge_the_media_entries(monkeypatch):
    exp = vlac.load(EXAMPLES / "coca.yaml")
    with_media = vlac.plan(exp, pin=PINS).to_json()
    monkeypatch.setattr(planner, "media_entries", lambda _: 0)
    without = vlac.plan(exp, pin=PINS).to_json()
    assert with_media["plan"] == without["plan"]  # the same layout, costed twice
    delta = with_media["predicted"]["time_s"]["pp_p2p"] - without["predicted"]["time_s"]["pp_p2p"]
    # each send (forward activation and backward gradient, m + pp - 1 of each without overlap)
    # carries mb x M x hidden bf16 bytes more, at the in-node or the inter-node link's bandwidth
    hw = Hardware(exp.cluster)
    sends = 2 * (with_media["plan"]["num_microbatches"] + 1)
    extra = 1 * exp.modalities["image"].tokens * exp.backbone.hidden * 2
    per_send = {float(hw.p2p(extra + 1e6, across) - hw.p2p(1e6, across)) for across in (False, True)}
    assert delta > 0
    assert any(delta == pytest.approx(sends * t, rel=1e-6) for t in per_send), (delta, per_send)


def test_late_fusion_layouts_with_pipelines_are_runnable():
    plan = vlac.plan(vlac.load(EXAMPLES / "coca.yaml"), pin=PINS).to_json()
    assert plan["runtime"]["runs"] and not plan["runtime"]["unsupported"], plan["runtime"]
