"""Context parallelism: the load-balanced chunk layout, the mask rows and RoPE positions that make
one rank's attention rows equal the single-process ones, the refusals, and (2 processes, gloo) the
whole model's loss and gradients under cp = 2."""

import copy
import functools
import os
import socket
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vlac
from vlac.runtime.layers import Attention
from vlac.runtime.masks import attention_mask
from vlac.runtime.parallel.context_parallel import (ContextShard, RotaryAtPositions, SequenceLayout,
                                                    apply_context_parallel, check_sequence, gathered_positions,
                                                    rank_positions)
from vlac.runtime.parallel.mesh import LayoutError, ParallelDims

TINY = Path(__file__).resolve().parents[3] / "examples" / "tiny_vla.yaml"


def test_each_rank_holds_an_early_chunk_and_its_mirror():
    assert rank_positions(16, 2, 0).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert rank_positions(16, 2, 1).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    assert gathered_positions(16, 2).tolist() == [0, 1, 2, 3, 12, 13, 14, 15, 4, 5, 6, 7, 8, 9, 10, 11]


@settings(max_examples=60, deadline=None)
@given(cp=st.integers(1, 8), chunk=st.integers(1, 9))
def test_the_layout_covers_the_sequence_once_with_equal_causal_work(cp, chunk):
    s = 2 * cp * chunk
    ranks = [rank_positions(s, cp, r) for r in range(cp)]
    assert torch.equal(torch.cat(ranks).sort().values, torch.arange(s))
    assert all(bool((r[1:] > r[:-1]).all()) for r in ranks)  # ascending: per-token order is kept
    work = {int((r + 1).sum()) for r in ranks}  # keys a causal query at position p sees: p + 1
    assert len(work) == 1
    lay = SequenceLayout.build(s, cp, 0, torch.device("cpu"))
    assert torch.equal(lay.gathered.index_select(0, lay.restore), torch.arange(s))


def test_a_sequence_that_does_not_split_into_2cp_chunks_is_refused_with_the_fix():
    check_sequence(48, 4)
    with pytest.raises(LayoutError, match=r"plan.cp = 4 .* multiple of 2\*cp = 8 .* train.seq_len is 36"):
        check_sequence(36, 4)


@functools.cache
def _backbone():
    return vlac.load(TINY).backbone


def _mask(kind: str, s: int, seed: int, segment: int) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(seed)
    span = torch.zeros(2, s, dtype=torch.long)
    a, b = sorted(torch.randint(0, s, (2,), generator=g).tolist())
    span[0, a:b + 1] = 1
    span[1, : s // 2] = 2
    prefix = (torch.arange(s) < torch.randint(0, s, (2, 1), generator=g)).long()
    return attention_mask(kind, span, prefix, segment, 1 if segment else 0)


@settings(max_examples=40, deadline=None)
@given(cp=st.sampled_from([1, 2, 3, 4]), chunk=st.integers(1, 4),
       kind=st.sampled_from(["causal", "bidirectional_image", "prefix_lm"]),
       segment=st.sampled_from([0, 3]), seed=st.integers(0, 1000))
def test_a_ranks_attention_rows_equal_the_single_process_rows(cp, chunk, kind, segment, seed):
    """The real Attention with the cp seams: RoPE at global positions, the keys/values an all-gather
    returns (rank order) and the mask rows of this rank give the rows of the whole-sequence result."""
    s = 2 * cp * chunk  # <= 32, within the tiny example's context length
    bb = _backbone()
    torch.manual_seed(seed)
    attn = Attention(bb).eval()
    x = torch.randn(2, s, bb.hidden)
    mask = _mask(kind, s, seed, segment)
    with torch.no_grad():
        whole = attn(x, mask)
        _, k_all, v_all = attn.project(x)
        rope = attn.rotary
        for rank in range(cp):
            shard = ContextShard(None, cp, rank)
            x_local = shard.begin(x)
            lay = shard.layout
            gathered_k, gathered_v = k_all.index_select(1, lay.gathered), v_all.index_select(1, lay.gathered)

            def all_gather(k, v):  # what the cp group's all-gather returns; this rank's own rows must match
                own = slice(rank * 2 * chunk, (rank + 1) * 2 * chunk)
                torch.testing.assert_close(k, gathered_k[:, own])
                torch.testing.assert_close(v, gathered_v[:, own])
                return gathered_k, gathered_v

            attn.kv_gather, attn.rotary = all_gather, RotaryAtPositions(rope, shard)
            try:
                rows = attn(x_local, shard.mask_rows(mask))
            finally:
                attn.kv_gather, attn.rotary = None, rope
            torch.testing.assert_close(rows, whole.index_select(1, lay.local), rtol=1e-5, atol=1e-6)


def test_causal_rows_are_explicit_and_match_a_causal_mask():
    lay = SequenceLayout.build(12, 3, 1, torch.device("cpu"))
    full = torch.ones(12, 12, dtype=torch.bool).tril().view(1, 1, 12, 12)
    assert torch.equal(lay.mask_rows(None), lay.mask_rows(full))
    assert lay.mask_rows(None).shape == (1, 1, 4, 12)


def test_a_later_pipeline_stage_enters_the_layout_the_first_stage_cut():
    """A stage after the first receives this rank's tokens; entering from the micro-batch's length
    gives it the layout (positions, mask rows) the first stage's cut used."""
    x = torch.randn(2, 12, 3)
    first, later = ContextShard(None, 3, 1), ContextShard(None, 3, 1)
    local = first.begin(x)
    later.enter(12, x.device)
    assert torch.equal(later.layout.local, first.layout.local) and later.layout.local.numel() == local.size(1)
    assert torch.equal(later.mask_rows(None), first.mask_rows(None))
    p = {"dp": 1, "tp": 1, "pp": 2, "cp": 2, "ep": 1, "zero": 0, "sequence_parallel": False, "schedule": "1f1b",
         "virtual_stages": 1, "recompute": "none"}
    ParallelDims.from_plan(p).check(4)  # cp inside pipeline stages is a layout this runtime runs


class _Mesh:
    """The part of a DeviceMesh apply_context_parallel reads before it builds anything."""

    def __init__(self, size: int):
        self._size = size

    def size(self) -> int:
        return self._size

    def get_local_rank(self) -> int:
        return 0

    def get_group(self):
        return None


@pytest.mark.parametrize("sets, match", [
    (["optimizer.per_modality_clip=true"], r"plan.cp = 2 with optimizer.per_modality_clip.*--pin cp=1"),
    (["train.seq_len=50", "train.global_batch_tokens=800"], r"multiple of 2\*cp = 4 .* train.seq_len is 50"),
])
def test_unsupported_experiments_are_refused_before_the_model_changes(sets, match):
    from vlac.runtime.model import build_model

    exp = vlac.load(TINY, sets)
    model = build_model(exp, "meta")
    with pytest.raises(LayoutError, match=match):
        apply_context_parallel(model, exp, _Mesh(2))
    assert model.layers[0].attn.kv_gather is None


# ---- two processes ---------------------------------------------------------------------------------
EXAMPLES = TINY.parent
CASES = {  # name -> (spec, profile, overrides); the tiny MoE example: mb 4, seq 48, 12 tokens per chunk at cp 2
    "causal": (TINY, None, []),
    "bidirectional_image": (TINY, None, ["fusion.attention_mask=bidirectional_image"]),
    "prefix_lm_segments": (TINY, None, ["fusion.attention_mask=prefix_lm", "memory.segment_length=16",
                                        "memory.memory_tokens=2"]),
    "learned_positions_dual_stream": (TINY, None, ["backbone.positions=learned", "fusion.stream=dual"]),
    "flow_matching_noise": (EXAMPLES / "transfusion.yaml", "tiny", []),
    "late_fusion": (EXAMPLES / "coca.yaml", "tiny", []),
}


def _worker(rank: int, port: int, results: dict) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from vlac.runtime.data import SyntheticData
    from vlac.runtime.losses import Objective
    from vlac.runtime.model import build_model
    from vlac.runtime.parallel.context_parallel import average_grads_over_cp, gather_sequence

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("cp",))
        # the all-gather's backward sums every rank's use of a slice into it
        x = torch.full((1, 3, 2), float(rank + 1), requires_grad=True)
        y = gather_sequence(x, 1, mesh.get_group())
        (y * torch.arange(6.0).view(1, 6, 1)).sum().backward()
        assert y[0, :, 0].tolist() == [1, 1, 1, 2, 2, 2]
        assert x.grad[0, :, 0].tolist() == [2.0 * (3 * rank + i) for i in range(3)]
        for name, (spec, profile, sets) in CASES.items():
            exp = vlac.load(spec, sets, profile)
            data = SyntheticData(exp)
            batch = data.micro_batch(0, 0, 4, data.global_loss_tokens(0) / 4, torch.device("cpu"))
            ref = build_model(exp)
            model = copy.deepcopy(ref)
            torch.manual_seed(100 + rank)  # the cp ranks must agree on the objective's noise all the same
            apply_context_parallel(model, exp, mesh)
            state = torch.get_rng_state()
            outs = []
            for m in (ref, model):
                torch.set_rng_state(state)
                out = Objective(m, exp)(batch)
                (out["ar_loss"] + out["aux_loss"]).backward()
                outs.append(out)
            average_grads_over_cp(list(model.parameters()), mesh.get_group(), 2)
            for key in [k for k in ("ar_loss", "aux_loss", "expert_load") if k in outs[0]]:
                torch.testing.assert_close(outs[1][key], outs[0][key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
            for (pname, p), q in zip(ref.named_parameters(), model.parameters()):
                if p.grad is not None:
                    torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=f"{name}: {pname}.grad")
            results[(rank, name)] = True
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_the_single_process_loss_and_gradients(monkeypatch):
    """Each rank checks cp = 2 against a single-process copy of the same model: losses, expert
    loads and every parameter gradient, for each mask kind, learned positions, dual streams, late
    fusion, and flow-matching noise drawn from random states that differed before cp was applied."""
    import torch.multiprocessing as mp

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(port, results), nprocs=2)
        assert sorted(results.keys()) == sorted((r, n) for r in range(2) for n in CASES)
