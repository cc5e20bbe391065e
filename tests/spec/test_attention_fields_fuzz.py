"""Hostile and random values of the attention fields (backbone.mla, attention_chunk,
attention_sinks, head_dim) and losses.mtp: every spec either is refused with a SpecError naming
the field, or lowers and plans without a crash."""

from pathlib import Path

import pytest

import vlac
from vlac.spec import SpecError

DENSE = Path(__file__).resolve().parents[2] / "examples" / "dense_text_1b.yaml"


@pytest.mark.parametrize("overrides,field", [
    (["backbone.head_dim=3"], "backbone.head_dim"),
    (["backbone.heads=64"], "backbone.heads"),  # hidden 64 / 64 heads = 1 channel a head
    (["backbone.head_dim=1", "backbone.kv_heads=null", "losses.mtp={}"], "backbone.head_dim"),
])
def test_an_odd_head_width_with_rope_is_refused_naming_the_field(overrides, field):
    # RoPE rotates channel pairs: this used to pass `validate` and crash lowering inside apply_rope
    with pytest.raises(SpecError) as err:
        vlac.load(DENSE, overrides, profile="tiny")
    assert f"({field})" in str(err.value) and "odd" in str(err.value)


def test_an_odd_head_width_is_fine_without_rope_or_with_mla():
    vlac.lower(vlac.load(DENSE, ["backbone.head_dim=3", "backbone.positions=learned"], profile="tiny"))
    mla = "backbone.mla={q_lora_rank: 8, kv_lora_rank: 8, qk_rope_head_dim: 2, qk_nope_head_dim: 1, v_head_dim: 1}"
    vlac.lower(vlac.load(DENSE, ["backbone.kv_heads=null", "backbone.head_dim=3", mla], profile="tiny"))


# ---- a seeded property over random mutations of the new fields and what they combine with ----------

import random  # noqa: E402

import yaml  # noqa: E402

from vlac.spec import Experiment  # noqa: E402

BASE = yaml.safe_load(DENSE.read_text())
SECTIONS = set(Experiment.model_fields)
# each pool holds values the field accepts, edge values (1, the bounds) and values it refuses (0, odd,
# past the bound, wrong types); "null" removes the feature
WIDTH = ["1", "2", "4", "6", "8", "16", "64", "4096", "65536", "0", "-1", "3", "65537", "true", "1.5", "'8'", ".nan", "[2]"]
POOLS = {
    "backbone.mla.q_lora_rank": WIDTH + ["null"],
    "backbone.mla.kv_lora_rank": WIDTH,
    "backbone.mla.qk_rope_head_dim": WIDTH,
    "backbone.mla.qk_nope_head_dim": WIDTH,
    "backbone.mla.v_head_dim": WIDTH,
    "backbone.attention_chunk": ["1", "2", "3", "8", "31", "32", "33", "16777216", "0", "16777217", "true", "null"],
    "backbone.attention_chunk_layers": ["all", "global_every:2", "global_every:1", "from:1", "from:9", "[0]", "[1]",
                                        "[0, 1]", "[]", "[2]", "[-1]", "global_every:0", "'x'"],
    "backbone.attention_sinks": ["true", "false", "'yes'", "2"],
    "losses.mtp.depth": ["1", "2", "15", "16", "30", "17", "0", "true", "2.5"],
    "losses.mtp.weight": ["0", "0.3", "1000000", "-1", ".inf", ".nan"],
    "backbone.heads": ["1", "2", "4", "8", "3", "64"],
    "backbone.head_dim": ["1", "2", "3", "8", "16", "null"],
    "backbone.layers": ["1", "2", "3"],
    "backbone.kv_heads": ["null", "null", "null", "2", "4"],
    "backbone.sliding_window": ["4", "64", "null"],
    "backbone.positions": ["rope", "rope", "learned", "none"],
    "train.seq_len": ["32", "16", "2"],
    "parallelism.tp": ["1", "2", "4"],
    "moe": ["{experts: 4, top_k: 2}", "null"],
}
NEW = [k for k in POOLS if k.startswith(("backbone.mla", "backbone.attention", "losses.mtp"))]


def _mutation(rng: random.Random) -> list[str]:
    keys = rng.sample(NEW, rng.randint(1, 4)) + rng.sample(sorted(set(POOLS) - set(NEW)), rng.randint(0, 3))
    out = ["backbone.kv_heads=null"]  # most spellings of mla need it; a drawn kv_heads overrides it
    if any(k.startswith("backbone.mla") for k in keys) and rng.random() < 0.8:
        out.append("backbone.mla={}")
    if any(k.startswith("losses.mtp") for k in keys):
        out.append("losses.mtp={}")
    return out + [f"{k}={rng.choice(POOLS[k])}" for k in keys]


def _check_refusal(err: SpecError, overrides: list[str]) -> None:
    text = str(err)
    assert "Traceback" not in text and "object has no attribute" not in text, text
    for issue in err.issues:
        # every issue names a field of the spec and says something about it
        assert issue.path and issue.path.split(".")[0].split("[")[0] in SECTIONS, (overrides, text)
        assert len(issue.message) > 15, (overrides, text)


def test_random_mutations_are_refused_naming_a_field_or_load():
    # 600 seeded mutations (~3 s): each loads, or is refused with issues that each name a spec field
    rng = random.Random(20261206)
    loaded = []
    for _ in range(600):
        overrides = _mutation(rng)
        try:
            loaded.append((vlac.load(BASE, overrides, profile="tiny"), overrides))
        except SpecError as err:
            _check_refusal(err, overrides)
    assert len(loaded) > 30  # the pools are not all refusals: the lowering test below has cases


def test_random_valid_mutations_lower_and_plan():
    # the first 20 loadable mutations of another seed lower and plan (~7 s): no crash in the cost
    # model or planner for mla widths of 1, chunks past the sequence, MTP depth near seq_len
    rng = random.Random(7)
    done = 0
    while done < 20:
        overrides = _mutation(rng)
        try:
            exp = vlac.load(BASE, overrides, profile="tiny")
        except SpecError:
            continue
        plan = vlac.plan(exp, graph=vlac.lower(exp))
        assert plan.chosen is not None, overrides
        done += 1
