"""Property tests: valid specs round-trip; corrupted specs fail cleanly (SpecError), never crash."""

import copy
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlac.spec import SpecError, deep_merge, dump, load

ROOT = Path(__file__).resolve().parents[2]
RAW = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "examples").glob("*.yaml"))}
NAMES = sorted(RAW)

junk = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                 st.text(max_size=12), st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
                 st.sampled_from(["4Mi", "80GB", "auto", "every:0", "from:-1", "h100-sxm", "1e400", "NaN"]))


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _set(node, path, value):
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _delete(node, path):
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]


@st.composite
def corrupted(draw):
    data = copy.deepcopy(RAW[draw(st.sampled_from(NAMES))])
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(data))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["set", "delete", "typo"]))
        try:
            if action == "set":
                _set(data, path, draw(junk))
            elif action == "delete":
                _delete(data, path)
            elif isinstance(path[-1], str):
                parent = data
                for p in path[:-1]:
                    parent = parent[p]
                parent[path[-1] + draw(st.sampled_from(["s", "_", "x"]))] = parent.pop(path[-1])
        except (KeyError, IndexError, TypeError):
            pass
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted())
def test_corruptions_give_a_clean_error_or_a_valid_spec(data):
    try:
        exp = load(data)
    except SpecError as e:
        assert e.issues and all(isinstance(i.message, str) and i.message for i in e.issues)
        return
    assert load(yaml.safe_load(dump(exp))) == exp


valid_edits = st.fixed_dictionaries({}, optional={
    "backbone": st.fixed_dictionaries({}, optional={"layers": st.integers(1, 6), "qk_norm": st.booleans(),
                                                    "norm": st.sampled_from(["rmsnorm", "layernorm"]),
                                                    "mlp": st.sampled_from(["swiglu", "gelu"])}),
    "optimizer": st.fixed_dictionaries({}, optional={"lr": st.floats(1e-6, 1e-1), "weight_decay": st.floats(0, 0.3)}),
    "train": st.fixed_dictionaries({}, optional={"seed": st.integers(0, 1000), "log_every": st.integers(1, 100)}),
    "launcher": st.fixed_dictionaries({}, optional={"time_limit": st.sampled_from(["4h", "30min", "02:00:00", 3600])}),
})


def applicable(raw: dict, edits: dict) -> dict:
    """`edits` as they keep this example valid: QK-norm does not combine with latent attention
    (backbone.mla), and a `from:K` MoE layout needs more than K layers."""
    bb = dict(edits.get("backbone", {}))
    if raw["backbone"].get("mla") is not None:
        bb.pop("qk_norm", None)
    moe_layers = (raw.get("moe") or {}).get("layers", "all")
    if "layers" in bb and isinstance(moe_layers, str) and moe_layers.startswith("from:"):
        bb["layers"] = max(bb["layers"], int(moe_layers.removeprefix("from:")) + 1)
    return {**edits, "backbone": bb} if "backbone" in edits else edits


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(NAMES), valid_edits, st.booleans())
def test_valid_specs_round_trip(name, edits, tiny):
    data = deep_merge(RAW[name], applicable(RAW[name], edits))
    exp = load(data, profile="tiny" if tiny and "tiny" in (data.get("profiles") or {}) else None)
    again = load(yaml.safe_load(dump(exp)))
    assert again == exp
    assert dump(again) == dump(exp)
