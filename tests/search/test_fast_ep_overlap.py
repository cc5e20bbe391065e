"""The fast path (vlac.search.fast_plan) under stack.ep_comm_overlap: its step bound reads the
steady-phase exposed all-to-all (no more than any rank's micro-batch pays), so it finds the
full planner's layout and figures (compiler/ep_overlap.py)."""

from __future__ import annotations

from test_fast import FLAGSHIP, check_sample

from vlac.search import Search


def test_fast_path_matches_the_full_path_with_the_all_to_all_overlap():
    # expert parallelism pinned and many micro-batches, so that the overlap sets the step
    # (0.083 s against 0.113 s without it for 8 experts, 5 layers)
    space = {"moe.experts": [4, 8], "moe.top_k": [2], "backbone.layers": [2, 3, 5], "parallelism.ep": [2],
             "parallelism.microbatch_size": [1], "stack.ep_comm_overlap": [True, False],
             "train.global_batch_tokens": [12288, 24576]}
    s = Search(FLAGSHIP, space, profile="tiny", objective="max:tokens_per_s")
    assert s.evaluator.fast
    compared = check_sample(s, 24, seed=1)  # every candidate, both settings
    fast = s.evaluator.fast_path
    assert compared == 24 and fast.stats["decided"] == compared and fast.stats["full_path"] == 0
