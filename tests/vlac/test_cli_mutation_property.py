"""A property of `vlac validate` over spec mutations: a number anywhere in an example replaced by
something no numeric field accepts (a mapping, a word, +-1e30, 10**30, NaN, infinity) ends in exit
2 and one line per problem, each naming a field, one of them the field that was broken, never a
traceback. Seeded and bounded (300 mutations, in process)."""

import json
import math
import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vlac.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "examples").glob("*.yaml"))}
BROKEN = [{"x": 1}, "not-a-number", -1e30, 1e30, 10**30, -(10**30), math.nan, math.inf, -math.inf, [1, 2]]
# an issue line: "  - PATH: message" or "  - --set K=V (PATH): message"
ISSUE = re.compile(r"^  - (?:--set \S+ \()?(?P<path>[A-Za-z_][\w.\[\]-]*)\)?: \S")


def _numbers(node, prefix=()):
    """Paths of the numeric leaves (bools are not numbers here) outside `profiles`."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        path = prefix + (key,)
        if path[0] == "profiles":
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield path
        else:
            yield from _numbers(value, path)


NUMBERS = {name: list(_numbers(data)) for name, data in EXAMPLES.items()}


def _dotted(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(path))


@st.composite
def broken_spec(draw):
    name = draw(st.sampled_from(sorted(NUMBERS)))
    path = draw(st.sampled_from(NUMBERS[name]))
    data = json.loads(json.dumps(EXAMPLES[name]))
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = draw(st.sampled_from(BROKEN))
    return data, _dotted(path)


@settings(max_examples=300, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(broken_spec())
def test_a_broken_number_is_exit_2_with_one_line_per_problem_naming_fields(tmp_path, case):
    data, field = case
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(data, allow_nan=True).replace("-Infinity", "-.inf").replace("Infinity", ".inf")
                    .replace("NaN", ".nan"))
    r = CliRunner().invoke(app, ["validate", str(spec)])
    assert r.exit_code == 2, f"{field}: {r.output}"
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output and "internal error" not in r.output
    lines = r.stderr.rstrip("\n").split("\n")
    assert re.match(r"error: (\d+ problems?|1 problem) in ", lines[0]), r.stderr
    issues = [ISSUE.match(line) for line in lines[1:]]
    assert issues and all(issues), r.stderr  # every further line is one problem naming a field
    assert int(lines[0].split()[1]) == len(issues), r.stderr
    named = [m.group("path") for m in issues]
    assert any(field == p or field.startswith(p + ".") or field.startswith(p + "[") or p.startswith(field)
               for p in named), f"{field} not named in {named}"
