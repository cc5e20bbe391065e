"""Writing a search's results: a table (CSV, JSON and Parquet), the Pareto picture (SVG) and
the best candidate as a spec file for `vlac compile`, with its plan. Byte-identical for the same search:
nothing that depends on timing or on the number of workers is written."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlac.spec import dump

from .metrics import METRICS
from .space import SearchError
from .picture import Point, pareto_svg, si

if TYPE_CHECKING:
    from .evaluate import Result
    from .session import Search

FILES = ("results.csv", "results.json", "results.parquet", "pareto.svg", "best.yaml", "best_plan.json")


def param_columns(results: list[Result]) -> list[str]:
    cols: list[str] = []
    for r in results:
        cols += [p for p in r.params if p not in cols]
    return cols


def results_csv(s: Search) -> str:
    rows = s.ordered()
    params = param_columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "status", f"objective ({s.objective.text()})", *params, *METRICS, "layout", "reason"])
    for r in rows:
        w.writerow([r.index, r.status, "" if r.objective is None else repr(r.objective),
                    *(_cell(r.params.get(p, "")) for p in params),
                    *(_cell(r.metrics.get(m, "")) for m in METRICS), r.layout, r.reason])
    return buf.getvalue()


def results_parquet(s: Search, path: Path) -> None:
    """The table of results.csv as typed Parquet columns (pyarrow): one row per candidate, the
    searched fields (JSON text where a value is a list or mapping), every metric as float64."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SearchError("results.parquet needs pyarrow: pip install 'vlac[data]' (or pyarrow)") from None
    rows = s.ordered()
    cols: dict[str, Any] = {"index": pa.array([r.index for r in rows], pa.int64()),
                            "status": pa.array([r.status for r in rows], pa.string()),
                            "objective": pa.array([r.objective for r in rows], pa.float64())}
    for p in param_columns(rows):
        values = [r.params.get(p) for r in rows]
        plain = all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)
        if plain and any(isinstance(v, float) for v in values):
            cols[p] = pa.array([None if v is None else float(v) for v in values], pa.float64())
        elif plain:
            cols[p] = pa.array(values, pa.int64())
        else:
            cols[p] = pa.array([None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in values],
                               pa.string())
    for m in METRICS:
        cols[m] = pa.array([r.metrics.get(m) for r in rows], pa.float64())
    cols["layout"] = pa.array([r.layout for r in rows], pa.string())
    cols["reason"] = pa.array([r.reason for r in rows], pa.string())
    table = pa.table(cols).replace_schema_metadata({"objective": s.objective.text()})
    # no creation-time statistics that vary: the same search writes the same bytes
    pq.write_table(table, path, compression="zstd", write_statistics=False)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, dict, bool)) or v is None:
        return json.dumps(v)
    return str(v)


def results_json(s: Search) -> dict[str, Any]:
    best = s.best
    return {"search": s.describe(), "counts": s.counts(),
            "best": None if best is None else {"index": best.index, "params": best.params, "objective": best.objective},
            "pareto": [r.index for r in s.pareto()],
            "results": [r.to_json() for r in s.ordered()]}


def _point(s: Search, r: Result) -> Point:
    x, y = s.pareto_axes
    label = f"#{r.index} {', '.join(f'{k}={v}' for k, v in r.params.items())}: {x.name} {si(r.metrics[x.name])}, " \
            f"{y.name} {si(r.metrics[y.name])}"
    if r.objective is not None:
        label += f", {s.objective.name} {r.objective:.4g}"
    if r.reason:
        label += f" ({r.reason})"
    return Point(r.metrics[x.name], r.metrics[y.name], "ok" if r.ok else "rejected", label)


def pareto_picture(s: Search) -> str:
    x, y = s.pareto_axes
    shown = [r for r in s.ordered() if r.status in ("ok", "rejected")]
    best = s.best
    counts = s.counts()
    title = (f"{y.name} vs {x.name}: {counts['ok']} ok, {counts['rejected']} rejected, "
             f"{counts['infeasible'] + counts['invalid'] + counts['error']} failed of {len(s.results)}")
    return pareto_svg([_point(s, r) for r in shown], [_point(s, r) for r in s.pareto()],
                      None if best is None else _point(s, best),
                      f"{METRICS[x.name].description} ({x.direction}imise)",
                      f"{METRICS[y.name].description} ({y.direction}imise)", title)


def best_spec(s: Search, best: Result) -> tuple[str, dict[str, Any]]:
    exp = s.experiment(best)
    plan = s.evaluator.planner(exp, graph=s.evaluator.cache.lower(exp))
    fields = ", ".join(f"{k}={json.dumps(v)}" for k, v in best.params.items())
    header = (f"# The best candidate (#{best.index}) of a vlac search from {s.source}\n"
              f"# objective {s.objective.text()} = {best.objective!r}\n"
              f"# fields: {fields}\n"
              f"# every default filled in; compile it with: vlac compile best.yaml\n")
    return header + dump(exp), plan.to_json()


def write_results(s: Search, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in FILES}
    paths["results.csv"].write_text(results_csv(s))
    paths["results.json"].write_text(json.dumps(results_json(s), indent=2, sort_keys=True) + "\n")
    results_parquet(s, paths["results.parquet"])
    paths["pareto.svg"].write_text(pareto_picture(s))
    best = s.best
    if best is None:
        for name in ("best.yaml", "best_plan.json"):
            paths.pop(name).unlink(missing_ok=True)  # a stale winner of an earlier run must not survive
        return paths
    spec_text, plan_json = best_spec(s, best)
    paths["best.yaml"].write_text(spec_text)
    paths["best_plan.json"].write_text(json.dumps(plan_json, indent=2, sort_keys=True) + "\n")
    return paths


__all__ = ["FILES", "best_spec", "pareto_picture", "results_csv", "results_json", "results_parquet", "write_results"]
