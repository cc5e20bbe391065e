"""The search's fast path on architectures with multi-token prediction (runtime/mtp.py): the MTP
modules sit on the output side of every depth's graph, so each depth derived from a reference
gives the full path's result exactly."""

from pathlib import Path

from vlac.search import Search

from test_fast import check_sample

FLAGSHIP = Path(__file__).resolve().parents[2] / "examples" / "vla_10b_moe_h100.yaml"


def test_fast_path_matches_the_full_path_with_mtp():
    space = {"losses.mtp.depth": [1, 2], "backbone.layers": [1, 2, 3, 5], "moe.top_k": [1, 2]}
    s = Search(FLAGSHIP, space, profile="tiny", objective="max:tokens_per_s")
    assert s.evaluator.fast
    compared = check_sample(s, 5, seed=0)
    fast = s.evaluator.fast_path
    assert compared >= 4 and fast.stats["decided"] == compared and fast.stats["full_path"] == 0
