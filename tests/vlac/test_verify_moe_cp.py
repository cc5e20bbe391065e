"""Dropless MoE layers under context parallelism route each cp rank's own tokens, and expert
parallelism folds over the tp and cp ranks as well as dp (issue 19): `vlac verify` against one
process. The balancing and z-losses are raised so that their gradient counts: without the sum of
the balancing statistics' gradient over cp (moe_local_routing.py) the layout below misses the
single-process gradient norm far beyond the tolerance (by hand: cp2 by 52 %)."""

from pathlib import Path

import pytest

import vlac
from vlac.verify import parse_layout, why_not_applicable

from verify_helpers import verify_passes

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"
DROPLESS = ("--set", "moe.capacity_factor=null", "--set", "moe.aux_loss_coef=0.5", "--set", "moe.z_loss_coef=0.05")


@pytest.mark.slow
def test_dropless_layers_route_their_cp_shard_and_fold_ep_over_tp_and_cp(monkeypatch):
    """tp2 x cp2 with ep4 and dp1: each rank routes a quarter of the micro-batch (its cp chunks' sp
    shard), the balancing statistics summed over tp and cp, and the four ranks exchange their
    copies in one ep group; the experts' gradients are reduced over it, not over tp and cp again."""
    verify_passes(TINY, "dp1xtp2xcp2xep4", 2, monkeypatch, *DROPLESS, plan_pattern=r"tp2\+sp")


def test_ep_beyond_dp_applies_to_dropless_layers_only():
    dropless = vlac.load(TINY, ["moe.capacity_factor=null"])
    capacity = vlac.load(TINY)
    assert why_not_applicable(dropless, parse_layout("dp1xtp2xcp2xep4")) == []
    assert "folded out of data parallelism" in why_not_applicable(capacity, parse_layout("dp1xtp2xep2"))[0]
    # without sequence parallelism the tp ranks share their tokens: 2 ranks hold distinct ones
    assert "2 is not a multiple" in why_not_applicable(dropless, parse_layout("dp1xtp2xcp2xep4+nosp"))[0]
