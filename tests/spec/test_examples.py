"""Every bundled example validates and compiles; every tiny profile validates and fits a CPU run."""

from pathlib import Path

import pytest

import vlac
from vlac.spec import read_mapping

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
FAMILIES = {"show_and_tell", "beit", "transfusion", "flamingo", "coca", "gato", "rt2", "llava", "qwen_vl", "show_o",
            "dense_text_1b", "vla_10b_moe_h100", "tiny_vla"}


def test_every_family_has_an_example():
    assert FAMILIES <= {p.stem for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_compiles(path, example_plan):
    _, plan = example_plan(path)
    assert plan.feasible, plan.advice
    assert plan.to_json()["model"]["params_total"] > 0


@pytest.mark.parametrize("path", [p for p in EXAMPLES if "tiny" in (read_mapping(p).get("profiles") or {})],
                         ids=lambda p: p.stem)
def test_tiny_profile_is_cpu_sized(path):
    tiny = vlac.load(path, profile="tiny")
    assert tiny.precision.dtype == "fp32" and not tiny.precision.fp8.enabled
    graph = vlac.lower(tiny, dtype="fp32")
    assert graph.params_total < 5_000_000
    assert tiny.train.total_steps >= 20
