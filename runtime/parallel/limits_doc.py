"""Render the runtime's limits (support.py) as docs/runtime-limits.md:
`python -m vlac.runtime.parallel.limits_doc > docs/runtime-limits.md`."""

from __future__ import annotations

from .support import LIMITS


def render_markdown() -> str:
    """docs/runtime-limits.md: the limits table of support.py, for users."""
    lines = ["# What vlac's runtime runs", "",
             "Generated from `runtime/parallel/support.py` (`python -m vlac.runtime.parallel.limits_doc >",
             "docs/runtime-limits.md`); a test fails when this file and the table drift apart.", "",
             "The planner costs every legal layout, but chooses only among those the runtime can apply.",
             "`vlac compile` reports how many layouts these limits set aside and how much faster the best",
             "of them would be; a plan pinned to one of them is marked as not runnable, and the emitted",
             "program refuses it before building a mesh.", "",
             "A limit marked *runs* is a layout the runtime does run, but otherwise than the cost model times",
             "it: the planner sets it aside unless pinned, and the plan says so; the others are refused.", "",
             "| limit | what | the runtime | way around |", "|---|---|---|---|"]
    for lim in LIMITS:
        lines.append(f"| `{lim.name}` | {lim.reason} | {'refuses' if lim.refused else 'runs'} | {lim.fix} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
