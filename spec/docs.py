"""docs/spec.md, generated from the same JSON Schema that `vlac schema` prints.

    python -m vlac.spec.docs > docs/spec.md

A test fails when the committed file drifts from the schema.
"""

from __future__ import annotations

import json
from typing import Any

from .experiment import Experiment

HEADER = """# The vlac spec

Generated from the JSON Schema (`vlac schema`) by `python -m vlac.spec.docs`; do not edit by hand.
Quantities accept units: counts ("4Mi", "2T"), sizes ("80GB"), bandwidths ("400Gb/s" = bits,
"450GB/s" = bytes), compute rates ("989TFLOPS") and durations ("4h", "02:00:00").
Overrides on the command line: `--set backbone.layers=4`; profiles: `--profile tiny`.
Numbers are finite (no NaN or infinity) and range-checked: the range follows the type, far beyond
any real training run, so that no value can make validation or planning hang or overflow.
Types are checked as written, never converted: an integer field takes `4`, not `"4"`, `4.0` or
`true`; a boolean takes `true`/`false` (YAML's unquoted `yes`/`no`/`on`/`off` too), not `1` or
`"yes"`; a number takes `1`, `0.5` or `3e-4`; a string given a number needs quotes (`"123"`).
"""


def schema() -> dict[str, Any]:
    return Experiment.model_json_schema()


def _type(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return f"[{prop['$ref'].rsplit('/', 1)[-1]}](#{prop['$ref'].rsplit('/', 1)[-1].lower()})"
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return " \\| ".join(_type(p) for p in prop[key])
    t = prop.get("type", "any")
    if t == "array":
        items = prop.get("items") or prop.get("prefixItems")
        if isinstance(items, list):
            return "[" + ", ".join(_type(i) for i in items) + "]"
        return f"list of {_type(items)}" if items else "list"
    if t == "object" and "additionalProperties" in prop and isinstance(prop["additionalProperties"], dict):
        return f"map of name → {_type(prop['additionalProperties'])}"
    return str(t)


def _bounds(prop: dict[str, Any]) -> str:
    """The range a number must lie in, e.g. " (1 to 256)", from the schema's limits (of the
    field, or of the numeric member of a union such as `int | null`)."""
    for p in [prop, *prop.get("anyOf", ())]:
        low = p.get("minimum", p.get("exclusiveMinimum"))
        high = p.get("maximum", p.get("exclusiveMaximum"))
        if high is not None:
            if "exclusiveMinimum" in p and p.get("type") == "integer":
                low, p = low + 1, {k: v for k, v in p.items() if k != "exclusiveMinimum"}
            above = "above " if "exclusiveMinimum" in p else ""
            below = "below " if "exclusiveMaximum" in p else ""
            return f" ({above}{_number(low)} to {below}{_number(high)})" if low is not None else f" (up to {_number(high)})"
    return ""


def _number(x: float) -> str:
    if isinstance(x, int) and x >= 2**10 and x & (x - 1) == 0:
        return f"2^{x.bit_length() - 1}"
    return f"{x:g}" if isinstance(x, float) else f"{x:,}"


def _default(prop: dict[str, Any], required: bool) -> str:
    if required:
        return "**required**"
    if "default" not in prop:
        return "(empty)"
    text = json.dumps(prop["default"], sort_keys=True)
    return f"`{text}`" if len(text) <= 40 else "(see schema)"


def _section(name: str, model: dict[str, Any]) -> list[str]:
    lines = [f"## {name}", ""]
    if model.get("description"):
        lines += [" ".join(model["description"].split()), ""]
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    required = set(model.get("required", ()))
    for field, prop in model.get("properties", {}).items():
        desc = " ".join(prop.get("description", "").split()).replace("|", "\\|")
        lines.append(f"| `{field}` | {_type(prop)}{_bounds(prop)} | {_default(prop, field in required)} | {desc} |")
    return lines + [""]


def render_markdown() -> str:
    s = schema()
    lines = [HEADER]
    lines += _section("Experiment", s)
    for name in sorted(s.get("$defs", {})):
        lines += _section(name, s["$defs"][name])
    return "\n".join(lines).rstrip() + "\n"


def undocumented_fields() -> list[str]:
    """Dotted names of properties without a description (should be none)."""
    s = schema()
    missing = [f"Experiment.{k}" for k, v in s.get("properties", {}).items() if not v.get("description")]
    for name, model in s.get("$defs", {}).items():
        missing += [f"{name}.{k}" for k, v in model.get("properties", {}).items() if not v.get("description")]
    return missing


if __name__ == "__main__":
    print(render_markdown(), end="")
