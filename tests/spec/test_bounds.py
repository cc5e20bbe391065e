"""Hostile inputs end in a SpecError naming the field, in bounded time: files that cannot be
parsed or expand without bound, numbers that are not finite or too large to use as sizes."""

import copy
import math
from pathlib import Path

import pytest
import yaml

from vlac.spec import SpecError, load
from vlac.spec.input_bounds import MAX_FILE_BYTES, MAX_NODES
from vlac.spec.units import MAX_TEXT, parse_count

ROOT = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((ROOT / "examples" / "tiny_vla.yaml").read_text())


def _error(source, *overrides, **kw) -> SpecError:
    with pytest.raises(SpecError) as info:
        load(source, overrides, **kw)
    return info.value


def _paths(err: SpecError) -> list[str]:
    return [i.path for i in err.issues]


def _write(tmp_path, name, content) -> Path:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


ALIAS_BOMB = "a: &a [1,2,3,4,5,6,7,8,9]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("name,content,says", [
    ("bomb.yaml", ALIAS_BOMB, f"more than {MAX_NODES:,} values"),
    ("cycle.yaml", "a: &a [*a]\n", "refers to the node that contains it"),
    ("deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than"),
    ("deep.json", '{"a": ' + "[" * 5000 + "]" * 5000 + "}", "nests deeper than"),
    ("bin.yaml", b"name: \xff\xfe\n", "not UTF-8"),
    ("big.yaml", "name: " + "9" * 5000 + "\n", "more than 4,300 digits"),
    ("big.json", '{"name": ' + "9" * 5000 + "}", "more than 4,300 digits"),
    ("big.toml", "name = " + "9" * 5000 + "\n", "more than 4,300 digits"),
    ("empty.yaml", "", "the file is empty"),
    ("list.yaml", "- 1\n", "holds [1] (a list) at the top level"),
    ("keys.yaml", "1: 2\n", "key 1 is not a string"),
    ("huge.yaml", "description: " + "x" * (MAX_FILE_BYTES + 1), "larger than"),
])
def test_unreadable_files_are_spec_errors(tmp_path, name, content, says):
    err = _error(_write(tmp_path, name, content))
    assert says in str(err)
    assert len(str(err)) < 1000  # never echoes the whole input


def test_an_empty_file_names_the_file_not_a_type(tmp_path):
    err = _error(_write(tmp_path, "empty.yaml", "\n# nothing here\n"))
    assert "empty.yaml" in str(err) and "NoneType" not in str(err) and "<spec>" not in str(err)


def test_deep_or_cyclic_mappings_from_python_are_refused():
    deep = copy.deepcopy(TINY)
    node = deep["backbone"]
    for _ in range(5000):
        node["x"] = {}
        node = node["x"]
    assert "nests deeper than" in str(_error(deep))
    cyclic = copy.deepcopy(TINY)
    cyclic["description"] = cyclic_list = []
    cyclic_list.append(cyclic_list)
    assert "nests deeper than" in str(_error(cyclic))


@pytest.mark.parametrize("profiles", [[1], "tiny", {"tiny": [1]}, {"tiny": "x"}, 5])
def test_profiles_that_are_not_mappings_are_spec_errors(profiles):
    data = {**TINY, "profiles": profiles}
    err = _error(data, profile="tiny")
    assert all(p.startswith("profiles") for p in _paths(err)), err


@pytest.mark.parametrize("path,value", [
    ("optimizer.lr", "nan"), ("optimizer.betas", "[0.9, .nan]"), ("optimizer.betas", "[0.9, 1.5]"),
    ("losses.ar.weight", ".inf"), ("losses.ar.modality_weights", "{text: .nan}"),
    ("modalities.action.low", "-.inf"), ("modalities.action.high", ".nan"),
    ("backbone.rope_theta", ".inf"), ("backbone.norm_eps", ".nan"),
    ("cluster.gpu.memory", ".nan"), ("cluster.gpu.memory", "1e400GB"), ("cluster.gpu.memory_bandwidth", ".inf"),
    ("cluster.gpu.memory_bandwidth", "0"), ("cluster.network.nic_bandwidth", "-1"),
    ("train.total_tokens", ".inf"), ("train.total_tokens", "1e30"), ("train.global_batch_tokens", "1e30T"),
])
def test_nan_inf_and_nonsense_figures_are_refused_by_field(path, value):
    err = _error(TINY, f"{path}={value}")
    assert any(p.startswith(path) for p in _paths(err)), err


@pytest.mark.parametrize("path,value", [
    ("backbone.heads", str(2**64)), ("backbone.layers", "1e30"), ("backbone.hidden", str(2**40)),
    ("backbone.context_length", str(10**20)), ("modalities.text.vocab_size", str(2**62)),
    ("modalities.image.image_size", str(2**40)), ("moe", "{experts: 18446744073709551616}"),
    ("cluster.nodes", str(2**40)), ("train.seq_len", str(2**40)), ("data.seed", str(2**70)),
])
def test_sizes_are_range_checked_before_use(path, value):
    err = _error(TINY, f"{path}={value}")
    assert any(p.startswith(path.split("=")[0]) for p in _paths(err)), err


def test_batches_that_would_need_millions_of_microbatches_are_refused():
    err = _error(TINY, "train.seq_len=16", f"train.global_batch_tokens={2**36}",
                 "backbone.context_length=16")
    assert "train.global_batch_tokens" in _paths(err)


def test_empty_special_tokens_are_refused_at_validation():
    err = _error(TINY, "vocab.special_tokens=[]")
    assert "vocab.special_tokens" in _paths(err) and "<bos>" in str(err)


def test_count_parsing_is_bounded_and_refuses_non_finite_values():
    for text in ("1" * 20000, "9" * 20000 + "M", "1" * (MAX_TEXT + 1)):
        with pytest.raises(ValueError, match="too long"):
            parse_count(text)
    for value in ("1e400", math.inf, math.nan, 10**5000):
        with pytest.raises(ValueError, match="finite|larger"):
            parse_count(value)
    assert parse_count(".5M") == 500_000 and parse_count("5.M") == 5_000_000


def test_the_number_of_modalities_is_bounded():
    data = copy.deepcopy(TINY)
    data["modalities"] = {f"m{i}": {"kind": "continuous"} for i in range(300)}
    assert "modalities" in _paths(_error(data))
