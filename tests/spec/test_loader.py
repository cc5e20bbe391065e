import json
from pathlib import Path

import pytest
import yaml

from vlac.spec import Experiment, SpecError, dump, load

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
FLAGSHIP = ROOT / "examples" / "vla_10b_moe_h100.yaml"


def _issues(overrides, source=TINY):
    with pytest.raises(SpecError) as e:
        load(source, overrides)
    return {i.path: i.message for i in e.value.issues}


def test_examples_validate():
    tiny = load(TINY)
    assert tiny.moe and tiny.moe.experts == 4 and tiny.backbone.layers == 2
    flag = load(FLAGSHIP)
    assert flag.cluster.world_size == 256 and flag.precision.fp8.enabled
    assert load(FLAGSHIP, profile="tiny").backbone.hidden == 64


def test_every_format_loads_the_same_experiment(tmp_path):
    data = yaml.safe_load(TINY.read_text())
    (tmp_path / "a.json").write_text(json.dumps(data))
    exp = load(TINY)
    assert load(tmp_path / "a.json") == exp
    (tmp_path / "b.py").write_text(f"import yaml\nexperiment = yaml.safe_load({TINY.read_text()!r})\n")
    assert load(tmp_path / "b.py") == exp


def test_toml(tmp_path):
    (tmp_path / "s.toml").write_text(
        'name = "t"\n[modalities.text]\nkind = "text"\ntokenizer = "byte"\nvocab_size = 256\ntokens = 8\n'
        '[backbone]\nlayers = 1\nhidden = 32\nheads = 2\ncontext_length = 16\n'
        '[train]\nseq_len = 16\nglobal_batch_tokens = "64"\n'
        '[[data.mixture]]\nname = "txt"\nmodalities = ["text"]\n')
    exp = load(tmp_path / "s.toml")
    assert exp.train.global_batch == 4


def test_round_trip_dump_load():
    for path in (TINY, FLAGSHIP):
        exp = load(path)
        assert load(yaml.safe_load(dump(exp))) == exp


def test_overrides_coerce_types_and_units():
    exp = load(TINY, ["backbone.layers=3", "train.total_tokens=1Mi", "moe.capacity_factor=null", "backbone.qk_norm=true"])
    assert exp.backbone.layers == 3 and exp.train.total_tokens == 2**20
    assert exp.moe.capacity_factor is None and exp.backbone.qk_norm is True


def test_unknown_key_suggests_the_right_one():
    issues = _issues(["backbone.kv_head=2"])
    assert "did you mean 'kv_heads'" in issues["backbone.kv_head"]


def test_unknown_key_inside_a_tagged_union_lists_that_models_fields():
    issues = _issues(["modalities.image.patch_siz=4"])
    assert "did you mean 'patch_size'" in issues["modalities.image.patch_siz"]


def test_choices_are_listed():
    issues = _issues(["backbone.norm=batchnorm"])
    assert "'rmsnorm'" in issues["backbone.norm"] and "'layernorm'" in issues["backbone.norm"]


@pytest.mark.parametrize("overrides,path,needle", [
    (["backbone.kv_heads=3"], "backbone.kv_heads", "kv_heads among"),
    (["moe.top_k=9"], "moe.top_k", "top_k <= 4"),
    (["parallelism.tp=3"], "parallelism.tp", "use tp among"),
    (["parallelism.ep=3"], "parallelism.ep", "ep among"),
    (["parallelism.pp=4", "parallelism.dp=auto"], "parallelism", "does not divide the cluster"),
    (["modalities.image.patch_size=5"], "modalities.image.patch_size", "patch_size among"),
    (["train.seq_len=16", "train.global_batch_tokens=768"], "train.seq_len", "cannot hold one sample"),
    (["moe.layers=every:9"], "moe.layers", "selects no layer"),
    (["moe.layers=[0, 7]"], "moe.layers", "outside"),
    (["train.seq_len=128"], "train.seq_len", "context_length"),
    (["data.mixture=[{name: x, modalities: [text, lidar]}]"], "data.mixture[0].modalities", "choose from"),
    (["cluster.preset=h300"], "cluster.preset", "h100-sxm"),
])
def test_cross_field_rules_name_the_field(overrides, path, needle):
    issues = _issues(overrides)
    assert path in issues, issues
    assert needle in issues[path]


def test_all_errors_reported_at_once():
    issues = _issues(["backbone.kv_head=2", "moe.routr=x", "backbone.norm=bn"])
    assert {"backbone.kv_head", "moe.routr", "backbone.norm"} <= set(issues)


def test_file_problems(tmp_path):
    with pytest.raises(SpecError, match="no spec file"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="cannot parse"):
        load(bad)
    with pytest.raises(SpecError, match="no profile 'huge'"):
        load(TINY, profile="huge")


def test_experiment_is_frozen():
    exp = load(TINY)
    with pytest.raises(Exception):
        exp.name = "other"  # type: ignore[misc]
    assert isinstance(exp, Experiment)


def test_shared_vocabulary_rules_under_late_fusion():
    data = yaml.safe_load((ROOT / "examples" / "flamingo.yaml").read_text())
    data["modalities"]["reply"] = {"kind": "text", "tokenizer": "bpe", "vocab_size": 100, "tokens": 2,
                                   "shares_vocab_with": "text"}
    with pytest.raises(SpecError) as e:
        load(data)
    assert "same tokenizer and vocab_size" in {i.path: i.message for i in e.value.issues}["modalities.reply.shares_vocab_with"]
    data["modalities"]["reply"]["vocab_size"] = 32000
    exp = load(data)
    assert exp.vocab_layout().range_of("reply") == exp.vocab_layout().range_of("text")
