"""A value of the wrong type is an error naming the field, what YAML read and the fix, never a
silent conversion (pydantic's lax mode read `layers: true` as 1 layer and `"yes"` as true); every
form a spec legitimately writes still loads, and every example validates and round-trips."""

import sys
from pathlib import Path

import pytest
import yaml

import vlac
from vlac.spec import SpecError, dump, load

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vlac"))
from cli_checks import refused_cleanly  # noqa: E402 (the CLI tests' check of a refused command)

ROOT = Path(__file__).resolve().parents[2]
DENSE = ROOT / "examples" / "dense_text_1b.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

WRONG = [  # (--set overrides, field named, texts of the message), at depths 1 to 4
    # bool for an integer
    (["backbone.layers=true"], "backbone.layers", ["expected an integer, got true (a boolean)", "whole number"]),
    (["losses.mtp.depth=true"], "losses.mtp.depth", ["expected an integer, got true (a boolean)"]),
    (["kv_cache.max_length=false"], "kv_cache.max_length", ["expected an integer, got false (a boolean)"]),
    # a string holding a number, for an integer
    (["backbone.layers='4'"], "backbone.layers", ["got '4' (a string)", "write 4 without quotes"]),
    (["cluster.nodes='2'"], "cluster.nodes", ["got '2' (a string)", "write 2 without quotes"]),
    (["backbone.mla={kv_lora_rank: '512'}", "backbone.kv_heads=null"], "backbone.mla.kv_lora_rank",
     ["expected an integer, got '512' (a string)", "write 512 without quotes"]),
    # a float for an integer: whole, fractional, and the exponent form YAML 1.2 reads as a float
    (["modalities.text.vocab_size=1.0"], "modalities.text.vocab_size", ["got 1.0 (a decimal number)", "write 1 (no"]),
    (["backbone.hidden=1000.5"], "backbone.hidden", ["e.g. 1000 or 1001"]),
    (["optimizer.schedule.warmup_steps=1e3"], "optimizer.schedule.warmup_steps", ["got 1000.0", "write 1000"]),
    # an integer or a string for a boolean
    (["backbone.attention_sinks=1"], "backbone.attention_sinks", ["expected true or false, got 1 (an integer)",
                                                                  "write true"]),
    (["precision.fp8.enabled=0"], "precision.fp8.enabled", ["got 0 (an integer)", "write false"]),
    (["backbone.attention_sinks='yes'"], "backbone.attention_sinks", ["got 'yes' (a string)",
                                                                      "write true without quotes"]),
    (["stack.tp_comm_overlap='off'"], "stack.tp_comm_overlap", ["write false without quotes"]),
    # a bool or a string for a number
    (["optimizer.lr=true"], "optimizer.lr", ["expected a number, got true (a boolean)"]),
    (["optimizer.schedule.min_lr_ratio='0.1'"], "optimizer.schedule.min_lr_ratio", ["write 0.1 without quotes"]),
    (["data.mixture[0].weight=true"], "data.mixture[0].weight", ["expected a number, got true (a boolean)"]),
    (["optimizer.betas=[true, 0.95]"], "optimizer.betas[0]", ["expected a number, got true (a boolean)"]),
    # a number for a string, a scalar for a list or a section
    (["name=123"], "name", ["expected a string, got 123 (an integer)", 'quote it: "123"']),
    (["data.mixture[0].modalities=text"], "data.mixture[0].modalities", ["expected a list, got 'text'", "[text]"]),
    (["backbone.mla=true", "backbone.kv_heads=null"], "backbone.mla", ["expected a section", "{} for the defaults"]),
    # unions: "auto" | int, "auto" | bool, "auto" | 0..3, str | list[int]
    (["parallelism.dp=true"], "parallelism.dp", ["expected 'auto' or an integer, got true (a boolean)"]),
    (["parallelism.tp='4'"], "parallelism.tp", ["write 4 without quotes"]),
    (["parallelism.sequence_parallel=1"], "parallelism.sequence_parallel", ["expected 'auto', true or false",
                                                                            "write true"]),
    (["parallelism.zero=true"], "parallelism.zero", ["expected 'auto', 0, 1, 2 or 3, got true (a boolean)"]),
    (["parallelism.zero=2.0"], "parallelism.zero", ["got 2.0 (a decimal number)", "write 2"]),
    (["moe.layers=[1, true]"], "moe.layers[1]", ["expected an integer, got true (a boolean)"]),
    # null for a field with a default; a unit field
    (["backbone.layers=null"], "backbone.layers", ["got null", "leave the key out for the default (24)"]),
    (["train.total_tokens=true"], "train.total_tokens", ["expected a count, got true (a boolean)"]),
    # a fixed-length list of the wrong length; a date for a string; a scalar for a pattern or a list
    (["optimizer.betas=[0.9]"], "optimizer.betas", ["expected a list of 2 values, got [0.9] (a list)",
                                                    "write e.g. [0.9, 0.95]"]),
    (["losses.contrastive.pair=[a, b, c]"], "losses.contrastive.pair", ["expected a list of 2 values"]),
    (["name=2024-01-01"], "name", ["got 2024-01-01 (a date)", 'quote it: "2024-01-01"']),
    (["moe.layers=5"], "moe.layers", ["expected a string or a list, got 5 (an integer)", "[5]"]),
]


@pytest.mark.parametrize("overrides,field,says", WRONG, ids=[" ".join(c[0]) for c in WRONG])
def test_a_wrong_type_names_the_field_what_was_read_and_the_fix(overrides, field, says):
    with pytest.raises(SpecError) as err:
        load(DENSE, overrides, profile="tiny")
    issue = next((i for i in err.value.issues if i.path == field), None)
    assert issue is not None, str(err.value)
    assert len(err.value.issues) == 1, str(err.value)  # a union's members make one issue, not one each
    for text in says:
        assert text in issue.message, issue.message
    assert "Input should" not in issue.message and "True" not in issue.message  # pydantic's and Python's words


@pytest.mark.parametrize("overrides,field,says", [WRONG[i] for i in (0, 4, 10, 18, 21, 24)],
                         ids=lambda c: str(c))
def test_vlac_validate_refuses_a_wrong_type_without_a_traceback(overrides, field, says):
    args = ["validate", str(DENSE)] + [a for o in overrides for a in ("--set", o)]
    refused_cleanly(args, f"({field})", says[0])


def test_vlac_validate_names_a_wrong_type_in_a_file(tmp_path):
    spec = yaml.safe_load(DENSE.read_text())
    spec["backbone"]["layers"] = True
    spec["losses"] = {"ar": {}, "mtp": {"depth": "2"}}
    spec["backbone"]["attention_sinks"] = "yes"
    path = tmp_path / "wrong.yaml"
    path.write_text(yaml.safe_dump(spec))
    r = refused_cleanly(["validate", str(path)], "3 problems", "backbone.layers: expected an integer, got true",
                        "losses.mtp.depth: expected an integer, got '2' (a string); write 2 without quotes",
                        "backbone.attention_sinks: expected true or false, got 'yes'")
    assert "Traceback" not in r.output


@pytest.mark.parametrize("override,field,value", [
    ("optimizer.lr=1", ("optimizer", "lr"), 1.0),  # an integer where a number is expected
    ("optimizer.lr=3e-4", ("optimizer", "lr"), 3e-4),  # YAML 1.2's float, a string to PyYAML
    ("optimizer.betas=[0.9, 1e-1]", ("optimizer", "betas"), (0.9, 0.1)),  # a list for a tuple
    ("backbone.layers=4", ("backbone", "layers"), 4),
    ("backbone.attention_sinks=yes", ("backbone", "attention_sinks"), True),  # YAML's unquoted yes
    ("backbone.qk_norm=off", ("backbone", "qk_norm"), False),
    ("parallelism.zero=2", ("parallelism", "zero"), 2),
    ("parallelism.dp=auto", ("parallelism", "dp"), "auto"),
    ("parallelism.sequence_parallel=true", ("parallelism", "sequence_parallel"), True),
    ("train.total_tokens=1T", ("train", "total_tokens"), 10**12),  # units
    ("train.total_tokens=2e12", ("train", "total_tokens"), 2 * 10**12),
    ("cluster.gpu.memory=80GB", ("cluster", "gpu", "memory"), 80e9),
    ("launcher.time_limit=4h", ("launcher", "time_limit"), 4 * 3600),
    ("backbone.norm=layernorm", ("backbone", "norm"), "layernorm"),  # a string for a Literal
])
def test_every_legitimate_form_still_loads(override, field, value):
    exp = load(DENSE, [override], profile="tiny")
    got = exp
    for part in field:
        got = getattr(got, part)
    assert got == value and type(got) is type(value)


def test_a_file_writing_3e_minus_4_reads_a_number(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text(DENSE.read_text().replace("lr: 3.0e-4", "lr: 3e-4"))
    assert "lr: 3e-4" in path.read_text()
    assert load(path).optimizer.lr == 3e-4


def test_a_python_mapping_may_write_lists_as_tuples():
    raw = yaml.safe_load(DENSE.read_text())
    raw["data"]["mixture"][0]["modalities"] = ("text",)
    exp = load(raw)
    assert exp.data.mixture[0].modalities == ["text"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_validates_and_round_trips(path):
    exp = vlac.load(path)
    assert load(yaml.safe_load(dump(exp))) == exp  # the dumped YAML, strictly validated again
    assert load(exp) == exp  # an Experiment, through its JSON dump
    raw = yaml.safe_load(path.read_text())
    if "tiny" in (raw.get("profiles") or {}):
        tiny = load(path, profile="tiny")
        assert load(yaml.safe_load(dump(tiny))) == tiny


def test_the_mla_heads_error_does_not_suggest_head_dim():
    with pytest.raises(SpecError) as err:
        load(DENSE, ["backbone.kv_heads=null", "backbone.mla={}", "backbone.hidden=1000", "backbone.heads=16"],
             profile="tiny")
    (issue,) = err.value.issues
    assert issue.path == "backbone.heads"
    assert "set head_dim" not in issue.message and "head_dim does not size them" in issue.message
    heads = [int(h) for h in issue.message.split("divide it (")[1].split(")")[0].split(" or ")]
    assert all(1000 % h == 0 for h in heads)
    load(DENSE, ["backbone.kv_heads=null", "backbone.mla={}", f"backbone.heads={heads[0]}", "backbone.hidden=1000"],
         profile="tiny")
    with pytest.raises(SpecError, match="or set head_dim"):  # standard attention: head_dim is a fix
        load(DENSE, ["backbone.hidden=1000", "backbone.heads=16"], profile="tiny")
