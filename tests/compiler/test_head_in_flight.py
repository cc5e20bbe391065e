"""The output head's activations in flight on the last pipeline rank: its chunk's forward is
followed by its own backward before the next micro-batch reaches it (1F1B, and Megatron's
interleaved steady state), so one micro-batch of logits is held there; GPipe holds all m.
The rest of a rank keeps its schedule's warm-up count (compiler/cost_model.py)."""

from __future__ import annotations

import pytest

import vlac

MICRO_BATCHES = 8


def spec(vocab: int) -> dict:
    return {"name": "head-in-flight",
            "modalities": {"text": {"kind": "text", "tokenizer": "bpe", "vocab_size": vocab, "tokens": 510}},
            "backbone": {"layers": 8, "hidden": 256, "heads": 4, "ffn_hidden": 512, "context_length": 512},
            "data": {"mixture": [{"name": "t", "modalities": ["text"]}]},
            "train": {"seq_len": 512, "global_batch_tokens": 512 * MICRO_BATCHES},
            "cluster": {"preset": "h100-sxm", "nodes": 1, "gpus_per_node": 2}}


def last_rank_activations(vocab: int, schedule: str) -> float:
    pins = {"tp": 1, "pp": 2, "cp": 1, "dp": 1, "microbatch_size": 1, "schedule": schedule, "recompute": "none"}
    if schedule == "interleaved_1f1b":
        pins["virtual_stages"] = 2
    stages = vlac.plan(vlac.load(spec(vocab)), pin=pins).chosen.stages
    return stages[-1]["memory"]["activations"]


@pytest.mark.parametrize("schedule", ["1f1b", "interleaved_1f1b"])
def test_the_last_rank_holds_one_micro_batch_of_logits(schedule):
    # the logits (and the loss's kept softmax) grow with the vocabulary; nothing else on the last rank does
    grown = {s: last_rank_activations(32768, s) - last_rank_activations(1024, s)
             for s in (schedule, "gpipe")}
    assert grown[schedule] > 0
    assert grown["gpipe"] == pytest.approx(MICRO_BATCHES * grown[schedule], rel=1e-9)
