"""Expert all-to-alls overlapped across micro-batches (stack.ep_comm_overlap, compiler/ep_overlap.py):
in the steady 1F1B phase each all-to-all hides behind its phase's compute of the other
micro-batch and only its excess is exposed; micro-batches outside that phase keep EP_EXPOSED."""

from __future__ import annotations

import numpy as np
import pytest

import vlac
from vlac.compiler.cost_model import EP_EXPOSED
from vlac.compiler.data_parallel import OVERLAP_SLOWDOWN
from vlac.compiler.ep_overlap import overlapped_ep, unpaired_share
from vlac.compiler.planner import Search


def times(ep: float, attn_side: float, moe: float) -> dict[str, np.ndarray]:
    """One key's layer times: `ep` seconds of all-to-all each direction, an attention side of
    `attn_side` forward (2x backward), MoE GEMMs of `moe` forward (dgrad and wgrad `moe` each)."""
    a = lambda x: np.array([[float(x)]])  # noqa: E731
    return {"ep_fwd": a(ep), "ep_bwd": a(ep), "gemm_fwd": a(attn_side + moe), "gemm_bwd": a(2 * attn_side + 2 * moe),
            "moe_fwd": a(moe), "moe_bwd": a(2 * moe), "moe_wgrad": a(moe), "attn_fwd": a(0), "attn_bwd": a(0),
            "mem_fwd": a(0), "mem_bwd": a(0)}


def test_each_all_to_all_hides_behind_its_phase_only():
    # compute far longer than every all-to-all: only the slowdown of the hidden time is charged
    fwd, bwd = overlapped_ep(times(1.0, 10.0, 10.0))
    assert fwd[0, 0] + bwd[0, 0] == pytest.approx(OVERLAP_SLOWDOWN * 2.0)
    # no MoE GEMMs: the dispatches (behind the experts' dgrad and wgrad) are exposed whole, the
    # combines hide behind the attention side
    fwd, bwd = overlapped_ep(times(1.0, 10.0, 0.0))
    assert fwd[0, 0] == pytest.approx(0.5 + OVERLAP_SLOWDOWN * 0.5)
    assert bwd[0, 0] == pytest.approx(0.5 + OVERLAP_SLOWDOWN * 0.5)
    # the experts' forward GEMMs hide nothing (the forward combine waits for them): more of
    # them leaves the forward dispatch's phase (the dgrad) as it is
    short, long = overlapped_ep(times(1.0, 0.1, 0.1)), overlapped_ep(times(1.0, 0.1, 0.2))
    assert long[0][0, 0] < short[0][0, 0]
    # the excess over each phase: forward dispatch behind the dgrad (0.1), forward combine behind
    # the attention side's backward (0.2), against 0.5 per all-to-all
    hidden = lambda comm, window: comm - window + OVERLAP_SLOWDOWN * window  # noqa: E731
    assert short[0][0, 0] == pytest.approx(hidden(0.5, 0.1) + hidden(0.5, 0.2))
    assert short[1][0, 0] == pytest.approx(hidden(0.5, 0.1) + hidden(0.5, 0.1))


def test_unpaired_share_is_the_micro_batches_in_flight():
    assert unpaired_share(np.array([[4.0, 1.0]]), np.array([[16.0]])).tolist() == [[0.25, 0.0625]]
    assert unpaired_share(np.array([[32.0]]), np.array([[16.0]]))[0, 0] == 1.0  # GPipe: every one


def spec(overlap: bool, schedule: str) -> dict:
    return {"name": "ep-overlap",
            "modalities": {"text": {"kind": "text", "tokenizer": "bpe", "vocab_size": 1000, "tokens": 1022}},
            "backbone": {"layers": 4, "hidden": 1024, "heads": 8, "ffn_hidden": 2048, "context_length": 1024},
            "moe": {"experts": 16, "top_k": 4, "capacity_factor": None, "expert_hidden": 512},
            "data": {"mixture": [{"name": "t", "modalities": ["text"]}]},
            "train": {"seq_len": 1024, "global_batch_tokens": 1024 * 256},
            "cluster": {"preset": "h100-sxm", "nodes": 4, "gpus_per_node": 8},
            "stack": {"preset": "megatron-te", "ep_comm_overlap": overlap}}


@pytest.fixture(scope="module")
def graph():
    return vlac.lower(vlac.load(spec(False, "1f1b")))


def ep_seconds(graph, overlap: bool, schedule: str) -> float:
    exp = vlac.load(spec(overlap, schedule))
    plan = vlac.plan(exp, graph=graph, pin={"tp": 1, "pp": 2, "cp": 1, "ep": 16, "microbatch_size": 1,
                                            "schedule": schedule, "recompute": "none"})
    return plan.chosen.time["ep_comm"]


def test_the_overlap_hides_expert_traffic_in_the_steady_phase_only(graph):
    plain, hidden = ep_seconds(graph, False, "1f1b"), ep_seconds(graph, True, "1f1b")
    assert 0 < hidden < plain
    # GPipe has no 1F1B phase: every micro-batch is unpaired and keeps EP_EXPOSED
    assert ep_seconds(graph, True, "gpipe") == pytest.approx(ep_seconds(graph, False, "gpipe"))
    assert EP_EXPOSED < 1.0


def test_presets_leave_the_overlap_off():
    from vlac.spec.stack import PRESETS

    assert not any(st.ep_comm_overlap for st in PRESETS.values())
    exp = vlac.load(spec(True, "1f1b"))
    assert exp.stack.resolved().ep_comm_overlap and Search(exp, exp.cluster, vlac.lower(exp)).model.p.stack.ep_comm_overlap
