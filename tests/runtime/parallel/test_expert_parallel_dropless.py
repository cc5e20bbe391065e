"""Dropless experts under expert parallelism: the routed copies travel with uneven all-to-alls and
come back to their tokens; outputs, input gradients and each rank's expert-weight gradients equal
one process running both ranks' tokens (1e-5), with a skewed routing that leaves an expert empty."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vlac.runtime.moe import dropless_experts
from vlac.runtime.parallel.expert_parallel_dropless import grouped_rows

EXPERTS, HIDDEN, FFN, TOP_K, TOKENS = 4, 8, 16, 2, 12


def test_received_blocks_land_in_padded_groups_of_their_expert_in_source_order():
    recv = torch.tensor([[2, 0], [1, 3]])  # rank 0 sends 2 rows to expert 0; rank 1 sends 1 and 3
    dest, ends = grouped_rows(recv, align=4)
    # arrival order: (r0,e0) x2, (r1,e0) x1, (r1,e1) x3; expert 0's group is rows 0-3 (3 used), expert 1's 4-7
    assert dest.tolist() == [0, 1, 2, 4, 5, 6]
    assert ends.tolist() == [4, 8] and ends.dtype == torch.int32
    dest, ends = grouped_rows(torch.tensor([[0, 0], [0, 5]]), align=1)  # an empty expert takes no rows
    assert dest.tolist() == [0, 1, 2, 3, 4] and ends.tolist() == [0, 5]


def _inputs(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    h = torch.randn(TOKENS, HIDDEN, generator=g)
    # skewed: expert 0 takes most first choices, expert 2 every second one, expert 3 none
    first = torch.where(torch.rand(TOKENS, generator=g) < 0.7, 0, 1)
    idx = torch.stack([first, torch.full_like(first, 2)], dim=1)
    weights = torch.softmax(torch.randn(TOKENS, TOP_K, generator=g), -1)
    return h, idx, weights


def _weights():
    g = torch.Generator().manual_seed(7)
    return [torch.randn(*shape, generator=g) * 0.3 for shape in
            ((EXPERTS, HIDDEN, FFN), (EXPERTS, HIDDEN, FFN), (EXPERTS, FFN, HIDDEN))]


def _rank(rank: int, port: int, out: str) -> None:
    from vlac.runtime.parallel.expert_parallel_dropless import ep_dropless_experts

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        # one process: both ranks' tokens through all experts; the loss is the sum of both ranks' losses
        full_w = [w.clone().requires_grad_() for w in _weights()]
        parts = [_inputs(r) for r in range(2)]
        ref_h = [p[0].clone().requires_grad_() for p in parts]
        ref_y = [dropless_experts(h, p[1], p[2], *full_w[:2], full_w[2], 0.0, True) for h, p in zip(ref_h, parts)]
        sum(y.pow(2).sum() for y in ref_y).backward()

        local = slice(rank * EXPERTS // 2, (rank + 1) * EXPERTS // 2)
        w = [x[local].clone().requires_grad_() for x in _weights()]
        h, idx, weights = _inputs(rank)
        h.requires_grad_()
        y = ep_dropless_experts(h, idx, weights, w[0], w[1], w[2], 0.0, True, ep=2,
                                group=torch.distributed.group.WORLD)
        y.pow(2).sum().backward()
        diffs = {"out": (y - ref_y[rank]).abs().max().item(),
                 "input_grad": (h.grad - ref_h[rank].grad).abs().max().item(),
                 "weight_grad": max((a.grad - b.grad[local]).abs().max().item() for a, b in zip(w, full_w)),
                 "scale": ref_y[rank].abs().max().item()}
        with open(f"{out}/{rank}.json", "w") as f:
            json.dump(diffs, f)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dropless_experts_over_two_ranks_equal_one_process(tmp_path):
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        d = json.loads((tmp_path / f"{rank}.json").read_text())
        assert d["scale"] > 0.1, d
        assert max(d["out"], d["input_grad"], d["weight_grad"]) < 1e-5, d
