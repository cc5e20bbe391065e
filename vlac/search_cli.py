"""`vlac search SPEC --space SPACE.yaml -o DIR`: the command, registered in vlac/cli.py.

A space file holds the space and, optionally, the rest of the search (command-line options win):

    space:
      moe.experts: [8, 16, 32, 64]
      backbone.layers: [16, 24, 32]
    objective: min:training_days
    constraints: ["params_active >= 2B", "peak_memory_gb <= 70"]
    strategy: grid          # or random, tpe, cmaes, nsga2 (Optuna's samplers), with budget
    budget: 100
    seed: 0
    pareto: [max:params_active, max:tokens_per_s]
    pareto_epsilon: 0.005   # front points within 0.5 % on both axes count as one

A file without a `space` key is the space itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vlac.search import METRICS, STRATEGIES, Search, SearchError
from vlac.search.picture import si
from vlac.search.space import check_integers
from vlac.spec import read_mapping

SPACE_FILE_KEYS = ("space", "objective", "constraints", "strategy", "budget", "seed", "pareto", "pareto_epsilon")


def read_space_file(path: Path) -> dict[str, Any]:
    data = read_mapping(path, "a space file is a mapping, e.g. `space: {moe.experts: [8, 16]}` (see examples/search/)")
    if "space" not in data:
        check_integers(data, f"{path}: space")
        return {"space": data, "constraints": []}
    unknown = sorted(set(data) - set(SPACE_FILE_KEYS))
    if unknown:
        raise SearchError(f"{path}: unknown key(s) {unknown}; a space file may hold: {', '.join(SPACE_FILE_KEYS)}")
    check_integers(data["space"], f"{path}: space")
    constraints = data.get("constraints") or []
    if isinstance(constraints, str):
        constraints = [constraints]
    if not isinstance(constraints, list):
        raise SearchError(f"{path}: constraints must be a list of 'NAME OP VALUE' strings, got {constraints!r}")
    _check_settings(data, path)
    return {**data, "constraints": constraints}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# the space file's settings besides the space: (accepted, what to write); null means the default
SETTING_RULES = {
    "objective": (lambda v: isinstance(v, str), "min:NAME or max:NAME, e.g. objective: min:training_days"),
    "strategy": (lambda v: isinstance(v, str), f"one of {', '.join(STRATEGIES)}"),
    "budget": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a positive number of candidates, e.g. 64"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63, "a whole number >= 0"),
    "pareto": (lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v),
               "two metrics with directions, e.g. [max:params_active, max:tokens_per_s]"),
    "pareto_epsilon": (lambda v: _is_number(v) or isinstance(v, list) and all(_is_number(e) for e in v),
                       "a relative tolerance, e.g. 0.005, or one per Pareto axis"),
}


def _check_settings(data: dict[str, Any], path: Path) -> None:
    """Refuse a setting of the wrong type before the search runs (a seed of "x" would be printed
    as markup, a pareto of true would fail in tuple())."""
    for key, (accepts, what) in SETTING_RULES.items():
        if data.get(key) is not None and not accepts(data[key]):
            shown = repr(data[key])
            raise SearchError(f"{path}: {key} = {shown if len(shown) <= 40 else shown[:37] + '...'} is not "
                              f"{what}")


def search_command(
        spec: Path = typer.Argument(..., help="base spec file"),
        space: Path = typer.Option(..., "--space", help="space file: spec fields -> values (and optionally objective, "
                                                        "constraints, strategy, budget, seed)"),
        out_dir: Path = typer.Option(..., "-o", "--out", help="where to write results.csv, results.json, pareto.svg, "
                                                              "best.yaml and best_plan.json"),
        objective: Optional[str] = typer.Option(None, help=f"min:NAME or max:NAME; NAME a metric ({', '.join(METRICS)}), "
                                                           f"spec.PATH or a plan-JSON path (default max:tokens_per_s)"),
        constraint: Optional[List[str]] = typer.Option(None, "--constraint", "-c",
                                                       help="'NAME OP VALUE', e.g. 'params_active <= 3B', 'gpus <= 128', "
                                                            "'fits' (repeatable; added to the space file's)"),
        strategy: Optional[str] = typer.Option(None, help=f"one of {', '.join(STRATEGIES)} (default grid for "
                                                          f"discrete spaces; tpe, cmaes, nsga2 are Optuna's samplers)"),
        budget: Optional[int] = typer.Option(None, help="most candidates to evaluate (required for random)"),
        seed: Optional[int] = typer.Option(None, help="seed of random sampling (default 0)"),
        workers: Optional[int] = typer.Option(None, help="processes evaluating candidates (default: this machine's cores)"),
        top: int = typer.Option(10, help="candidates listed in the report"),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="progress bar (default: on a terminal)"),
        set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="override a base spec field: a.b.c=VALUE (repeatable)"),
        profile: Optional[str] = typer.Option(None, "--profile", "-p", help="apply a named profile of the base spec first"),
) -> None:
    """Search a space of experiments: validate, lower and plan each candidate, rank and filter them,
    write the results table, the Pareto picture and the best spec, and print the winner's plan."""
    from .api import plan
    from .cli import _run, out

    def go():
        cfg = read_space_file(space)
        s = Search(spec, cfg["space"], objective=objective or cfg.get("objective") or "max:tokens_per_s",
                   constraints=[*cfg["constraints"], *(constraint or [])],
                   strategy=strategy or cfg.get("strategy"), budget=budget if budget is not None else cfg.get("budget"),
                   seed=seed if seed is not None else (cfg.get("seed") or 0), profile=profile, overrides=set_ or (),
                   pareto=tuple(cfg.get("pareto") or ("max:params_active", "max:tokens_per_s")),
                   pareto_epsilon=cfg.get("pareto_epsilon"),  # null or absent: Search takes the default
                   planner=plan)
        s.run(workers=workers, progress=progress)
        paths = s.write(out_dir)
        print_search(out, s, top)
        out.print("wrote " + ", ".join(str(p) for p in paths.values()), highlight=False)
    _run(go)


# ---- the console report: counts, the leading candidates, why others failed, the winner's plan ----
# metric, column header, format: the figures listed for each leading candidate
FIGURES = (("tokens_per_s", "tokens/s", si), ("params_active", "active", si), ("params_total", "total", si),
           ("training_days", "days", lambda x: f"{x:.2f}"), ("peak_memory_gb", "peak GB", lambda x: f"{x:.1f}"))


def print_search(con: Console, s: Search, top: int = 10) -> None:
    counts = s.counts()
    n = len(s.results)
    rate = f", {n / s.seconds:.1f} candidates/s" if s.seconds > 0 else ""
    # every text that quotes the user's input (paths, names, values, reasons) is escaped: a "[/x]" in
    # it would be read as rich markup and end the report in a MarkupError
    con.print(f"[bold]search[/] from {escape(str(s.source))}: {n} candidates ({s.strategy}, seed {s.seed}) in "
              f"{s.seconds:.1f} s{rate}; objective {escape(s.objective.text())}"
              + (f"; constraints: {escape(', '.join(c.text for c in s.constraints))}" if s.constraints else ""),
              highlight=False)
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
            t.add_row(str(r.index), escape(" ".join(f"{short[k]}={v}" for k, v in r.params.items())), f"{r.objective:.4g}",
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
            t.add_row(status, str(len(rs)), escape(f"#{first.index} " + ", ".join(f"{k}={v}" for k, v in first.params.items())),
                      escape(first.reason))
        con.print(t)

    best = s.best
    if best is None:
        con.print("[bold red]no candidate is ok[/]: relax a constraint or widen the space", highlight=False)
        return
    con.print(f"\n[bold]winner[/] #{best.index}: " + escape(", ".join(f"{k}={v}" for k, v in best.params.items())
              + f"  ({s.objective.name} {best.objective:.4g})"), highlight=False)
    exp = s.experiment(best)
    from .report import print_plan

    print_plan(con, s.evaluator.planner(exp, graph=s.evaluator.cache.lower(exp)))


def _short_names(paths: list[str]) -> list[str]:
    """Column headers: the last part of each path where that is unambiguous."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return [short if last.count(short) == 1 else path for short, path in zip(last, paths)]


def _reason_kind(reason: str) -> str:
    """Reasons that differ only in their numbers group together."""
    return re.sub(r"\d[\d,.]*", "#", reason)


__all__ = ["print_search", "read_space_file", "search_command"]
