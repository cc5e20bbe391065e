"""MoE layers with a capacity under context parallelism route each cp rank's own tokens with the
capacity one process applies, and expert parallelism folds over dp x cp (x tp under sp) for them
(issue 19): `vlac verify` against one process. The capacity is small enough that most copies are
dropped, so which ones are kept (the first-come order of the whole micro-batch, from every rank's
per-(row, piece, expert) counts: runtime/parallel/moe_local_routing_order.py) decides the result;
the balancing and z-losses are raised so that the statistics' reductions over cp and tp count.
By hand, each rank numbering its copies among its own tokens only (the other ranks' pieces of
its row ignored) misses: cp2 by 2.1e-3 in the loss and 1.4e-2 in the gradient norm, tp2xcp2 by
1.8e-3 / 1.3e-2."""

from pathlib import Path

import pytest

import vlac
from vlac.runtime.moe import MoELayer
from vlac.verify import parse_layouts, verify

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"
CAPACITY_SETS = ["moe.capacity_factor=0.5", "moe.aux_loss_coef=0.5", "moe.z_loss_coef=0.05"]
LAYOUTS = "cp2,tp2xcp2,cp2xpp2,dp1xcp2xep2,dp1xtp2xcp2xep4,fsdp2xcp2xep2"


@pytest.mark.slow
def test_capacity_layers_route_their_cp_chunks_and_fold_ep_over_cp_and_tp(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    exp = vlac.load(TINY, CAPACITY_SETS)
    layer = MoELayer(exp.backbone, exp.moe)
    tokens = 8 * exp.train.seq_len  # the micro-batch verify picks for these layouts (fsdp2: mb 8)
    assert layer.capacity(tokens) * exp.moe.experts <= tokens * exp.moe.top_k // 2  # half the copies dropped, or more
    report = verify(exp, parse_layouts(LAYOUTS), steps=3, workdir=tmp_path)
    assert report.microbatch_size == 8
    for run in report.runs:
        assert report.passed(run), (run.layout.name, run.error, run.max_rel(report.reference))
    plans = {run.layout.name: run.plan_summary for run in report.runs}
    assert "tp2+sp" in plans["dp1xtp2xcp2xep4"] and "cp2 ep4" in plans["dp1xtp2xcp2xep4"], plans
    assert "cp2 ep2 zero3" in plans["fsdp2xcp2xep2"], plans
