"""Dropless MoE layers under context parallelism route each cp rank's own tokens, and expert
parallelism folds over the tp and cp ranks as well as dp (issue 19): `vlac verify` against one
process. The balancing and z-losses are raised so that their gradient counts: without the sum of
the balancing statistics' gradient over cp (moe_local_routing.py) the layout below misses the
single-process gradient norm far beyond the tolerance (by hand: cp2 by 52 %). The same run's
checkpoint, whose experts are sharded over the folded expert mesh, resumes on that layout and on
one process."""

import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import vlac
from vlac.verify import SINGLE, TOLERANCE, Report, microbatch_size, parse_layout, run_layout, why_not_applicable

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"
DROPLESS_SETS = ["moe.capacity_factor=null", "moe.aux_loss_coef=0.5", "moe.z_loss_coef=0.05"]


@pytest.mark.slow
def test_dropless_layers_route_their_cp_shard_and_fold_ep_over_tp_and_cp_and_resume(tmp_path, monkeypatch):
    """tp2 x cp2 with ep4 and dp1: each rank routes a quarter of the micro-batch (its cp chunks' sp
    shard), the balancing statistics summed over tp and cp, and the four ranks exchange their
    copies in one ep group; the experts' gradients are reduced over it, not over tp and cp again.
    Its checkpoint after 2 steps then resumes for 2 more on the same layout and on one process:
    both give the losses and gradient norms of 4 steps in one process (the 4th step's depend on
    the Adam moments loaded for the sharded experts, not only on the weights: by hand, dp1xtp2xep2
    resumed with the experts' moments zeroed misses the 4th loss by 1.3e-3, its |g| by 5.0e-3)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    exp = vlac.load(TINY, DROPLESS_SETS)
    folded = parse_layout("dp1xtp2xcp2xep4")
    mb = microbatch_size(exp, [SINGLE, folded])  # as `vlac verify` picks it
    # one process, 4 steps: its first 2 are the reference `vlac verify` would run (a step's loss
    # does not depend on how many steps the run goes on for; tests/vlac/verify_helpers.py)
    whole = run_layout(exp, SINGLE, mb, 4, tmp_path / "whole")
    run = run_layout(exp, folded, mb, 2, tmp_path)
    reference = replace(whole, losses=whole.losses[:2], grad_norms=whole.grad_norms[:2])
    report = Report("the spec as written", mb, 2, TOLERANCE, reference, [run])
    assert report.passed(run), (run.error, run.max_rel(report.reference))
    assert re.search(r"tp2\+sp", run.plan_summary), run.plan_summary
    # the same checkpoint resumed on one process: run_layout's run folder is <workdir>/<layout>/run
    shutil.copytree(tmp_path / folded.name / "run", tmp_path / "moved" / SINGLE.name / "run")
    resumed = run_layout(exp, folded, mb, 2, tmp_path)
    moved = run_layout(exp, SINGLE, mb, 2, tmp_path / "moved")
    for r in (whole, resumed, moved):
        assert not r.error, r.error
    for r in (resumed, moved):
        assert r.losses == pytest.approx(whole.losses[2:], rel=1e-4)
        assert r.grad_norms == pytest.approx(whole.grad_norms[2:], rel=1e-4)


def test_ep_beyond_dp_applies_to_dropless_and_capacity_layers_with_whole_experts():
    dropless = vlac.load(TINY, ["moe.capacity_factor=null"])
    capacity = vlac.load(TINY)
    assert why_not_applicable(dropless, parse_layout("dp1xtp2xcp2xep4")) == []
    assert why_not_applicable(capacity, parse_layout("dp1xtp2xep2")) == []
    assert "folded out of data parallelism" in why_not_applicable(capacity, parse_layout("dp1xtp2xep2+etp"))[0]
    # without sequence parallelism the tp ranks share their tokens: 2 ranks hold distinct ones
    assert "2 is not a multiple" in why_not_applicable(dropless, parse_layout("dp1xtp2xcp2xep4+nosp"))[0]
