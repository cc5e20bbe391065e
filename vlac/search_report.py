"""The console report of a search: counts, the leading candidates, why others failed, and the
winner's plan. Every figure comes from the results."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

from .api import plan as _plan
from .report import print_plan
from .search_pareto import si

if TYPE_CHECKING:
    from .search import Search

# metric, column header, format: the figures listed for each leading candidate
FIGURES = (("tokens_per_s", "tokens/s", si), ("params_active", "active", si), ("params_total", "total", si),
           ("training_days", "days", lambda x: f"{x:.2f}"), ("peak_memory_gb", "peak GB", lambda x: f"{x:.1f}"))


def print_search(con: Console, s: Search, top: int = 10) -> None:
    counts = s.counts()
    n = len(s.results)
    rate = f", {n / s.seconds:.1f} candidates/s" if s.seconds > 0 else ""
    con.print(f"[bold]search[/] from {s.source}: {n} candidates ({s.strategy}, seed {s.seed}) in {s.seconds:.1f} s{rate}; "
              f"objective {s.objective.text()}" + (f"; constraints: {', '.join(c.text for c in s.constraints)}"
                                                     if s.constraints else ""), highlight=False)
    con.print("  " + ", ".join(f"{v} {k}" for k, v in counts.items() if v), highlight=False)

    ranked = s.ranked()
    if ranked:
        params = list(dict.fromkeys(p for r in ranked[:top] for p in r.params))
        short = dict(zip(params, _short_names(params)))
        figures = [(name, label, fmt) for name, label, fmt in FIGURES if name != s.objective.name]
        objective = next((label for name, label, _ in FIGURES if name == s.objective.name), s.objective.name)
        with_layout = con.width >= 140  # the winner's plan below shows its layout; the CSV has all
        t = Table(title=f"Best {min(top, len(ranked))} of {len(ranked)} ok candidates", box=box.SIMPLE_HEAD)
        t.add_column("#", justify="right", no_wrap=True)
        t.add_column("candidate", overflow="fold", ratio=1)
        for col in (objective, *(label for _, label, _ in figures)):
            t.add_column(col, justify="right", no_wrap=True, min_width=len(col))
        if with_layout:
            t.add_column("layout", overflow="fold", ratio=1)
        for r in ranked[:top]:
            t.add_row(str(r.index), " ".join(f"{short[k]}={v}" for k, v in r.params.items()), f"{r.objective:.4g}",
                      *(fmt(r.metrics[name]) for name, _, fmt in figures), *([r.layout] if with_layout else []))
        con.print(t)

    failed = [r for r in s.ordered() if not r.ok]
    if failed:
        t = Table(title="Not ok (first of each status and reason)")
        for col in ("status", "count", "example", "reason"):
            t.add_column(col)
        groups: dict[tuple[str, str], list] = {}
        for r in failed:
            groups.setdefault((r.status, _reason_kind(r.reason)), []).append(r)
        for (status, _), rs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            first = rs[0]
            t.add_row(status, str(len(rs)), f"#{first.index} " + ", ".join(f"{k}={v}" for k, v in first.params.items()),
                      first.reason)
        con.print(t)

    best = s.best
    if best is None:
        con.print("[bold red]no candidate is ok[/]: relax a constraint or widen the space", highlight=False)
        return
    con.print(f"\n[bold]winner[/] #{best.index}: " + ", ".join(f"{k}={v}" for k, v in best.params.items())
              + f"  ({s.objective.name} {best.objective:.4g})", highlight=False)
    exp = s.experiment(best)
    print_plan(con, _plan(exp, graph=s.evaluator.cache.lower(exp)))


def _short_names(paths: list[str]) -> list[str]:
    """Column headers: the last part of each path where that is unambiguous."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return [short if last.count(short) == 1 else path for short, path in zip(last, paths)]


def _reason_kind(reason: str) -> str:
    """Reasons that differ only in their numbers group together."""
    return re.sub(r"\d[\d,.]*", "#", reason)


__all__ = ["print_search"]
