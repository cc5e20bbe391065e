"""`vlac search SPEC --space SPACE.yaml -o DIR`: the command, registered in vlac/cli.py.

A space file holds the space and, optionally, the rest of the search (command-line options win):

    space:
      moe.experts: [8, 16, 32, 64]
      backbone.layers: [16, 24, 32]
    objective: min:training_days
    constraints: ["params_active >= 2B", "peak_memory_gb <= 70"]
    strategy: grid          # or random, with budget
    budget: 100
    seed: 0
    pareto: [max:params_active, max:tokens_per_s]

A file without a `space` key is the space itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from vlac.spec import read_mapping

from .search_metrics import METRICS
from .search_space import SearchError

SPACE_FILE_KEYS = ("space", "objective", "constraints", "strategy", "budget", "seed", "pareto")


def read_space_file(path: Path) -> dict[str, Any]:
    data = read_mapping(path)
    if "space" not in data:
        return {"space": data, "constraints": []}
    unknown = sorted(set(data) - set(SPACE_FILE_KEYS))
    if unknown:
        raise SearchError(f"{path}: unknown key(s) {unknown}; a space file may hold: {', '.join(SPACE_FILE_KEYS)}")
    constraints = data.get("constraints") or []
    if isinstance(constraints, str):
        constraints = [constraints]
    if not isinstance(constraints, list):
        raise SearchError(f"{path}: constraints must be a list of 'NAME OP VALUE' strings, got {constraints!r}")
    return {**data, "constraints": constraints}


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
        strategy: Optional[str] = typer.Option(None, help="grid (default for discrete spaces) or random"),
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
    from .cli import _run, out
    from .search import Search
    from .search_report import print_search

    def go():
        cfg = read_space_file(space)
        s = Search(spec, cfg["space"], objective=objective or cfg.get("objective") or "max:tokens_per_s",
                   constraints=[*cfg["constraints"], *(constraint or [])],
                   strategy=strategy or cfg.get("strategy"), budget=budget if budget is not None else cfg.get("budget"),
                   seed=seed if seed is not None else cfg.get("seed", 0), profile=profile, overrides=set_ or (),
                   pareto=tuple(cfg.get("pareto") or ("max:params_active", "max:tokens_per_s")))
        s.run(workers=workers, progress=progress)
        paths = s.write(out_dir)
        print_search(out, s, top)
        out.print("wrote " + ", ".join(str(p) for p in paths.values()), highlight=False)
    _run(go)


__all__ = ["read_space_file", "search_command"]
