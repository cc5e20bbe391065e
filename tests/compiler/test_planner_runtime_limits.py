"""The planner chooses only layouts vlac's runtime runs, says what its limits set aside and what
that costs, and marks a pinned layout the runtime cannot run."""

from pathlib import Path

import numpy as np
import pytest

import vlac
from vlac.compiler.planner import Search
from vlac.runtime.parallel.support import LIMITS, excluded, not_as_timed, plan_columns, unsupported

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def flagship():
    exp = vlac.load(ROOT / "examples" / "vla_10b_moe_h100.yaml")
    return exp, vlac.lower(exp)


def _cols(**kw):
    base = {"dp": 8, "tp": 1, "cp": 1, "pp": 1, "ep": 1, "etp": 1, "zero": 1, "sp": False, "m": 4,
            "schedule": "1f1b", "fp8": False}
    return {**base, **kw}


def test_limits_give_the_same_answer_on_scalars_and_on_columns(flagship):
    """The planner asks on numpy columns, the runtime on one plan's scalars: both must agree."""
    exp, _ = flagship
    layouts = [_cols(), _cols(cp=2, dp=4), _cols(cp=2, pp=2, dp=2), _cols(tp=2, dp=4, fp8=True), _cols(ep=4, dp=2),
               _cols(ep=2, dp=4), _cols(pp=2, dp=4, schedule="zero_bubble"), _cols(pp=2, dp=4, zero=3,
               schedule="zero_bubble"), _cols(pp=2, dp=4, m=5, schedule="zero_bubble"),
               _cols(pp=2, dp=4, schedule="1f1b"), _cols(etp=2, tp=2)]
    cols = {k: np.array([lay[k] for lay in layouts]) for k in layouts[0] if k != "fp8"}
    cols["fp8"] = np.array([lay["fp8"] for lay in layouts])
    masks = excluded(exp, cols)
    for i, lay in enumerate(layouts):
        by_scalar = bool(unsupported(exp, lay) or not_as_timed(exp, lay))
        by_column = any(m[i] for m in masks.values())
        assert by_scalar == by_column, lay
    assert not unsupported(exp, _cols()) and not unsupported(exp, _cols(ep=2, dp=4))
    assert any("ep must divide dp" in r for r in unsupported(exp, _cols(ep=4, dp=2)))
    # an MoE under cp (and with tp but etp = 1) runs as the cost model times it (test_moe_... below)
    assert not unsupported(exp, _cols(cp=2, dp=4)) and not not_as_timed(exp, _cols(cp=2, dp=4))
    assert not not_as_timed(exp, _cols(tp=2, dp=4, etp=1))
    dense = vlac.load(ROOT / "examples" / "dense_text_1b.yaml")
    # context parallelism composes with pipelining, tied embeddings with tp and pp together
    assert not unsupported(dense, _cols(cp=2, dp=4)) and not unsupported(dense, _cols(cp=2, pp=2, dp=2))
    assert dense.backbone.tied_embeddings and not unsupported(dense, _cols(tp=2, pp=2, dp=2))
    assert not unsupported(exp, _cols(pp=2, dp=4, m=4, schedule="zero_bubble"))
    assert any("--pin zero=2" in r for r in unsupported(exp, _cols(pp=2, dp=4, zero=3, schedule="zero_bubble")))
    assert any("rounds" in r for r in unsupported(exp, _cols(pp=2, dp=4, m=5, schedule="zero_bubble")))


def test_every_limit_has_a_fix_and_a_distinct_name():
    names = [lim.name for lim in LIMITS]
    assert len(names) == len(set(names))
    assert all(lim.fix and lim.reason for lim in LIMITS)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_plan_a_layout_the_runtime_runs_when_one_exists(path, example_plan):
    exp, p = example_plan(path)
    rt = p.to_json()["runtime"]
    lay = p.chosen.layout
    cols = plan_columns(p.to_json()["plan"])
    assert rt["runs"] == (not unsupported(exp, cols)) and rt["not_as_timed"] == not_as_timed(exp, cols)
    if not rt["runs"] or rt["not_as_timed"]:
        # only when no legal layout of the cluster avoids every limit: then the fewest are broken
        assert "every legal layout" in rt["why"], (lay.short(), rt)
    assert rt["excluded_total"] >= 0 and all(v > 0 for v in rt["excluded_layouts"].values())


def test_a_pinned_layout_the_runtime_cannot_run_is_planned_and_marked():
    exp = vlac.load(ROOT / "examples" / "dense_text_1b.yaml")
    g = vlac.lower(exp)
    p = vlac.plan(exp, graph=g, pin={"dp": 2, "pp": 2, "zero": 3, "schedule": "zero_bubble"})
    rt = p.to_json()["runtime"]
    assert (p.chosen.layout.pp, p.chosen.layout.zero, p.chosen.layout.schedule) == (2, 3, "zero_bubble")
    assert not rt["runs"] and "pins" in rt["why"]
    assert any("zero-bubble schedule with ZeRO-3" in r and "--pin zero=2" in r for r in rt["unsupported"])
    assert vlac.plan(exp, graph=g, pin={"tp": 2, "pp": 2}).runtime["runs"]  # tied embeddings over tp x pp run
    assert vlac.plan(exp, graph=g, pin={"cp": 2, "pp": 2}).runtime["runs"]  # cp inside pipeline stages runs


def test_what_the_limits_cost_is_reported_from_the_same_evaluation(flagship):
    """With TP pinned, FP8 x TP is set aside if the runtime lacks it; the plan reports the faster
    layout it could not choose, or none when the chosen one is as fast."""
    exp, g = flagship
    p = vlac.plan(exp, graph=g)
    rt = p.runtime
    best = rt.get("best_excluded")
    if best is not None:
        assert best["step_time_s"] < p.best.step_time_s
        assert best["faster_pct"] == pytest.approx((p.best.step_time_s / best["step_time_s"] - 1) * 100)
    for alt in p.alternatives:  # alternatives are runnable too
        cols = plan_columns({**alt.layout.__dict__, "expert_tensor_parallel": alt.layout.etp,
                             "num_microbatches": alt.layout.num_microbatches})
        assert not unsupported(exp, cols) and not not_as_timed(exp, cols)


def test_capacity_moe_layers_are_costed_on_the_tokens_the_runtime_routes(flagship):
    """The runtime routes a capacity MoE layer's own chunks under cp (exact capacity positions from
    the cp ranks' copy counts): its MoE GEMMs halve at cp 2 and no gather is charged; at tp 2
    without sp and etp = 1 every tp rank runs the whole sequence (not halved); with etp = tp the
    experts split over tp, and under cp the layer is then gathered, the gather charged."""
    exp, g = flagship
    prof = Search(exp, exp.cluster, g).model.p
    j = next(j for j, p in enumerate(prof.profiles) if p.moe)

    def t(tp=1, cp=1, etp=1):
        return prof.times(np.array([tp]), np.array([False]), np.array([cp]), np.array([2]), np.array([1]),
                          np.array([etp]))

    one, cp2, tp2, etp2 = t(), t(cp=2), t(tp=2), t(tp=2, etp=2)
    assert cp2["attn_fwd"][0, j] == pytest.approx(one["attn_fwd"][0, j] / 2)
    assert tp2["attn_fwd"][0, j] == pytest.approx(one["attn_fwd"][0, j] / 2)
    gemm = one["gemm_fwd"][0, j]
    assert cp2["gemm_fwd"][0, j] == pytest.approx(gemm / 2, rel=0.05)  # its own tokens
    assert tp2["gemm_fwd"][0, j] > 0.75 * gemm  # attention projections halve, the MoE (most of it) does not
    assert etp2["gemm_fwd"][0, j] < 0.6 * gemm
    prof.profiles[j].moe = False  # the ring attention's exchanges alone
    try:
        ring = t(cp=2)["cp"][0, j]
    finally:
        prof.profiles[j].moe = True
    assert cp2["cp"][0, j] == pytest.approx(ring) and ring > 0
    assert t(tp=2, cp=2, etp=2)["cp"][0, j] > ring  # gathered over cp for its split experts
    # another stack routes each rank's own tokens too: under cp the runtime runs it as timed
    te = vlac.load(ROOT / "examples" / "vla_10b_moe_h100.yaml", ["stack.preset=megatron-te"])
    assert not_as_timed(te, _cols(cp=2, dp=4)) == []
    assert any("sequence_parallel=true" in r for r in not_as_timed(te, _cols(tp=2, dp=4)))


def test_the_expert_all_to_all_carries_the_capacity_slots_the_runtime_sends(flagship):
    """vlac's capacity dispatch exchanges every expert's C slots, filled or not (runtime/moe.py
    `capacity`): the cost model's all-to-all moves E*C slots per micro-batch, not tokens*top_k;
    dropless routing moves only the routed copies."""
    from vlac.runtime.moe import MoELayer

    exp, g = flagship
    prof = Search(exp, exp.cluster, g).model.p
    layer = MoELayer(exp.backbone, exp.moe)
    e, k = exp.moe.experts, exp.moe.top_k
    for tokens in (1, 7, 4096, 4097, 2 * prof.seq_len):
        sent = e * int(layer.capacity(tokens))
        assert prof.capacity_slots(np.array([float(tokens)]))[0] * tokens * k == pytest.approx(sent, rel=1e-12)
    j = next(j for j, p in enumerate(prof.profiles) if p.moe)

    def ep_fwd():
        return prof.times(np.array([1]), np.array([False]), np.array([1]), np.array([2]), np.array([8]),
                          np.array([1]))["ep_fwd"][0, j]

    padded = ep_fwd()
    prof.capacity_factor = None  # dropless: the same layer moves tokens * top_k copies
    try:
        dropless = ep_fwd()
    finally:
        prof.capacity_factor = exp.moe.capacity_factor
    assert exp.moe.capacity_factor > 1 and padded > dropless * 1.1


def test_a_dropless_moe_layer_under_tp_is_costed_on_its_own_sequence_shard():
    """vlac's runtime routes a dropless MoE layer's own sequence shard under tp with etp = 1
    (runtime/parallel/moe_local_routing.py): its router and shared-expert GEMMs take half as long
    at tp 2, without the shared experts' TP collectives and with half the all-to-all; a layer with
    a capacity routes its own shard too under sp (its capacity positions those of the whole
    sequence), and is replicated without sp."""
    exp = vlac.load(ROOT / "examples" / "vla_10b_moe_h100.yaml", ["moe.capacity_factor=null"])
    prof = Search(exp, exp.cluster, vlac.lower(exp)).model.p
    j = next(j for j, p in enumerate(prof.profiles) if p.moe)
    assert prof.profiles[j].moe_tp_regions >= 1  # the shared experts

    def t(tp=1, ep=1, sp=True):
        return prof.times(np.array([tp]), np.array([sp and tp > 1]), np.array([1]), np.array([2]), np.array([ep]),
                          np.array([1]))

    moe_gemms = [g for g in prof.profiles[j].gemms if g.moe_part]
    assert moe_gemms
    one, tp2 = t(), t(tp=2)
    # attention projections split by tp, the router and shared experts by tokens, the experts too
    assert tp2["gemm_fwd"][0, j] == pytest.approx(one["gemm_fwd"][0, j] / 2, rel=0.05)
    assert tp2["ep_fwd"][0, j] == 0 and t(tp=2, ep=8)["ep_fwd"][0, j] < t(tp=1, ep=8)["ep_fwd"][0, j]
    prof.capacity_factor = 1.25  # without sp: the router and shared experts run whole on every tp rank
    try:
        own, gathered = t(tp=2), t(tp=2, sp=False)
    finally:
        prof.capacity_factor = None
    shared = sum(g.flops for g in moe_gemms)
    assert own["gemm_fwd"][0, j] == pytest.approx(tp2["gemm_fwd"][0, j]) and own["tp_fwd"][0, j] < gathered["tp_fwd"][0, j]
    assert gathered["gemm_fwd"][0, j] > tp2["gemm_fwd"][0, j] and shared > 0
    assert gathered["tp_fwd"][0, j] > tp2["tp_fwd"][0, j]
