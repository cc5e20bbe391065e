"""Fuzzing the spec front door: every example mutated the way a careless or hostile user would
(deleted keys, swapped types, extreme numbers, NaN/inf, odd strings, deep nesting, YAML aliases,
broken bytes) ends in a vlac error or a valid experiment (and a plan), never another exception
and never a hang. Derandomized, so CI runs the same few thousand specs every time."""

from __future__ import annotations

import copy
import json
import math
import pickle
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vlac import api
from vlac.cli import app
from vlac.compiler.planner import PlanError
from vlac.spec import Experiment, SpecError

ROOT = Path(__file__).resolve().parents[2]
RAW = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "examples").glob("*.yaml"))}
# each example is read once; a mutation starts from a pickle of it (several times cheaper than
# copy.deepcopy, which was a third of the test's time)
PICKLED = {name: pickle.dumps(data) for name, data in RAW.items()}
# planning costs ~0.1-2 s a spec: plan mutations of the examples that plan fastest
PLANNED = ["show_and_tell", "tiny_vla", "dense_text_1b", "gato", "llava"]
HANG_GUARD_S = 60  # far above the slowest honest case; only a hang reaches it

HOSTILE = [None, True, "", "x" * 300, -1, 0, 1, 3, 2**64, 10**30, 1e30, -1e30, math.nan, math.inf, -math.inf,
           [], {}, [1, 2], {"a": 1}, "[/x]", "a\nb", "../../etc", "/abs", "1" * 5000, "9" * 20000 + "M",
           "inf", "nan", "1e400", "1e30T", "-5", 0.5, 1e-300, "4M", "80GB", "auto", "every:0", "from:99999999999",
           2**20, 2**31, 1024, 2**17, 2**24, 2**36, 10**16, "x;rm -rf /", "\x00", "\u202e", 4096, 7]


def _paths(node) -> list[tuple]:
    """Every key path in `node`, down to 13 levels, in document order (a loop: a recursive
    generator cost as much as the loading it feeds)."""
    out, stack = [], [((), node)]
    while stack:
        prefix, n = stack.pop()
        if len(prefix) > 12:
            continue
        items = n.items() if isinstance(n, dict) else enumerate(n) if isinstance(n, list) else ()
        children = [(prefix + (k,), v) for k, v in items]
        out.extend(path for path, _ in children)
        stack.extend(reversed(children))
    return out


PATHS = {name: _paths(data) for name, data in RAW.items()}


def _nested(depth: int, leaf):
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"a": leaf}
    return leaf


@st.composite
def mutated(draw, names=tuple(sorted(RAW))):
    """(example name, mutated mapping): one to four careless or hostile edits."""
    name = draw(st.sampled_from(names))
    data = pickle.loads(PICKLED[name])
    for edit in range(draw(st.integers(1, 4))):
        paths = PATHS[name] if edit == 0 else _paths(data)  # the first edit sees the example as read
        path = paths[draw(st.integers(0, len(paths) - 1))]
        parent = data
        for p in path[:-1]:
            parent = parent[p]
        key, value = path[-1], parent[path[-1]]
        action = draw(st.sampled_from(["set", "set", "delete", "scale", "swap", "typo", "deep", "profiles", "graft"]))
        if action == "set":
            parent[key] = copy.deepcopy(draw(st.sampled_from(HOSTILE)))
        elif action == "delete":
            del parent[key]
        elif action == "scale" and isinstance(value, (int, float)) and not isinstance(value, bool):
            parent[key] = value * draw(st.sampled_from([10**6, 10**12, 2**40, -1, 0, 1e300]))
        elif action == "swap":
            parent[key] = str(value) if not isinstance(value, str) else draw(st.sampled_from([[value], {value: 1}, 1]))
        elif action == "typo" and isinstance(key, str):
            parent[key + draw(st.sampled_from(["s", "_", "x"]))] = parent.pop(key)
        elif action == "deep":
            parent[key] = _nested(draw(st.sampled_from([40, 500, 3000])), value)
            break  # nothing below a deep value is worth editing further
        elif action == "profiles":
            data["profiles"] = draw(st.sampled_from([[1], "x", {"tiny": [1]}, {"tiny": "x"}, {"t": {"backbone": 3}},
                                                     None, {"tiny": {"backbone": {"layers": 10**9}}}]))
        elif action == "graft":
            other = paths[draw(st.integers(0, len(paths) - 1))]
            node = data
            for p in other:
                node = node[p] if isinstance(node, (dict, list)) and (p in node if isinstance(node, dict) else
                                                                      isinstance(p, int) and p < len(node)) else None
            parent[key] = copy.deepcopy(node)
    return name, data


def _alias_bomb(levels: int) -> str:
    lines = ["a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@st.composite
def spec_bytes(draw):
    """A mutated example as a file's bytes, sometimes damaged at the text level."""
    _, data = draw(mutated())
    text = _as_text(data)
    damage = draw(st.sampled_from(["none", "none", "bomb", "cycle", "deep", "bytes", "bigint", "truncate", "tabs"]))
    if damage == "bomb":
        text += _alias_bomb(draw(st.integers(3, 9)))
    elif damage == "cycle":
        text += "loop: &loop [*loop]\n"
    elif damage == "deep":
        text += "deep: " + "[" * 4000 + "]" * 4000 + "\n"
    elif damage == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif damage == "tabs":
        text = text.replace("  ", "\t", 3)
    elif damage == "bigint":
        text += "train: {seed: " + "7" * 5000 + "}\n"
    raw = text.encode()
    if damage == "bytes":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\x00", b"\xed\xa0\x80"])) + raw[at:]
    return raw


def _as_text(data) -> str:
    """The mapping as YAML text, written as JSON (a subset of YAML): PyYAML's emitter would cost
    most of the test's time. A mapping JSON cannot write (too deep) becomes a stub."""
    try:
        return json.dumps(data, indent=1) + "\n"
    except (RecursionError, ValueError, TypeError):
        return "name: x\n"


class Hang(Exception):
    pass


@contextmanager
def hang_guard():
    def ring(*_):
        raise Hang(f"no answer within {HANG_GUARD_S} s")
    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(HANG_GUARD_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _load_or_spec_error(source, profile=None) -> Experiment | None:
    try:
        return api.load(source, profile=profile)
    except SpecError as e:
        assert e.issues and all(i.message for i in e.issues)
        assert len(str(e)) < 20_000, "an error message echoed the input"
        return None


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


@fuzz(1650)
@given(mutated(), st.booleans())
def test_mutated_mappings_load_or_fail_with_a_spec_error(case, tiny):
    _, data = case
    with hang_guard():
        _load_or_spec_error(data, "tiny" if tiny else None)


@fuzz(250)
@given(spec_bytes(), st.sampled_from([".yaml", ".json", ".toml"]))
def test_mutated_files_load_or_fail_with_a_spec_error(tmp_path, raw, suffix):
    path = tmp_path / f"spec{suffix}"  # one folder for every example (a folder each cost more than the load)
    path.write_bytes(raw)  # YAML text under a .json or .toml name: a parse error, as it should be
    with hang_guard():
        _load_or_spec_error(path)


@fuzz(120)
@given(spec_bytes())
def test_validate_cli_answers_every_mutated_file_with_ok_or_a_message(tmp_path, raw):
    path = tmp_path / "spec.yaml"
    path.write_bytes(raw)
    with hang_guard():
        r = CliRunner().invoke(app, ["validate", str(path)])
    assert r.exit_code in (0, 2), r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "internal error" not in r.output


@fuzz(60)  # planning costs ~0.2 s a spec: a sample; the load-only tests above take the thousands
@given(mutated(tuple(PLANNED)))
def test_every_accepted_mutation_plans_or_fails_with_a_vlac_error(case):
    _, data = case
    with hang_guard():
        exp = _load_or_spec_error(data)
        if exp is None:
            return
        try:
            plan = api.plan(exp)
        except (SpecError, PlanError) as e:
            assert str(e)
            return
    assert plan.chosen is not None or not plan.feasible
