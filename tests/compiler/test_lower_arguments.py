"""vlac.lower's micro_batch and seq_len: a value the model cannot be traced at is refused with a
ValueError naming the argument and the fix, not a torch error from deep inside the trace."""

from pathlib import Path

import pytest

import vlac

DENSE = Path(__file__).resolve().parents[2] / "examples" / "dense_text_1b.yaml"
MLA_MTP = ["backbone.kv_heads=null", "backbone.mla={q_lora_rank: 16, kv_lora_rank: 8, qk_rope_head_dim: 4, "
           "qk_nope_head_dim: 8, v_head_dim: 8}", "losses.mtp={depth: 16}", "backbone.attention_chunk=8"]


@pytest.fixture(scope="module")
def exp():
    return vlac.load(DENSE, MLA_MTP, profile="tiny")  # context_length 32


@pytest.mark.parametrize("kwargs,says", [
    # each of these used to reach torch: "negative dimension", "cannot reshape tensor of 0 elements",
    # "zeros() takes 1 positional argument", "start (0) + length (33) exceeds dimension size (32)"
    ({"seq_len": -1}, "seq_len: -1 is not a positive number of tokens"),
    ({"micro_batch": 0}, "micro_batch: 0 is not a positive number of sequences"),
    ({"micro_batch": True}, "micro_batch: True is not a positive number"),
    ({"seq_len": 2.5}, "seq_len: 2.5 is not a positive number"),
    ({"seq_len": 33}, "seq_len: 33 exceeds backbone.context_length 32"),
    ({"seq_len": 0}, "seq_len: 0 is not a positive number"),  # was read as "the spec's seq_len"
    # lowered silently with MTP modules that have no target; the spec refuses the same for train.seq_len
    ({"seq_len": 17}, "pass seq_len >= 18"),
])
def test_bad_shapes_are_refused_naming_the_argument(exp, kwargs, says):
    with pytest.raises(ValueError) as err:
        vlac.lower(exp, **kwargs)
    assert says in str(err.value)


def test_the_smallest_sequence_mtp_allows_lowers(exp):
    g = vlac.lower(exp, micro_batch=2, seq_len=18)
    assert (g.micro_batch, g.seq_len) == (2, 18)
