"""Which runtime limits cost the most: for every example at 8, 256 and 16,384 GPUs, the planner is
run with all of vlac's runtime limits (runtime/parallel/support.py) and then once with each limit
that set layouts aside lifted; a limit's gain in a case is how much faster the best plan would be
without it (chosen step time / lifted step time - 1). Limits are ranked by their summed gain.
Limits interact (the best excluded layout may break several), so each case's gain with every
limit lifted at once (the planner's best_excluded) is printed after the ranking, and every case's
ratio of the best layout's step time under the cost model to the best runnable one's (the chosen
plan; 1 where the best layout runs) is written with it.

Run: python benchmarks/limit_gains.py [--examples a.yaml,b.yaml] [--gpus 8,256,16384]
(benchmarks/planner.py --limits prints the same ranking after its timing table.) The ranking is
also written to benchmarks/results/limit_gains.json (--out another path).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import vlac
from vlac.runtime.parallel import support

ROOT = Path(__file__).resolve().parents[1]
GPU_COUNTS = (8, 256, 16384)
RESULTS = ROOT / "benchmarks" / "results" / "limit_gains.json"


def at_scale(path: Path, gpus: int):
    """The example on `gpus` GPUs (whole nodes of its own size)."""
    exp = vlac.load(path)
    per_node = exp.cluster.gpus_per_node
    return vlac.load(path, [f"cluster.nodes={max(1, gpus // per_node)}"])


def gains(exp) -> tuple[dict[str, float], dict]:
    """Limit name -> fractional step-time gain of lifting it alone (only limits that set any aside),
    and the planner's best_excluded note (every limit lifted; {} when none would gain)."""
    graph = vlac.lower(exp)
    base = vlac.plan(exp, graph=graph)
    out = {}
    every = support.LIMITS
    try:
        for name in base.runtime.get("excluded_layouts", {}):
            support.LIMITS = tuple(lim for lim in every if lim.name != name)
            lifted = vlac.plan(exp, graph=graph)
            out[name] = base.chosen.step_time_s / lifted.chosen.step_time_s - 1
    finally:
        support.LIMITS = every
    return out, base.runtime.get("best_excluded", {})


def ranking(examples: list[Path], gpu_counts=GPU_COUNTS):
    """[(limit, summed gain, largest gain, case of the largest)] best first, [(case, best_excluded)]
    for the cases where lifting every limit gains, [(case, best runnable step time / best step
    time)] for every case planned, and the cases that failed to plan."""
    total: dict[str, float] = {}
    worst: dict[str, tuple[float, str]] = {}
    joint = []
    ratios = []
    failed = []
    for path in examples:
        for gpus in gpu_counts:
            case = f"{path.stem}@{gpus}"
            try:
                per_limit, best_excluded = gains(at_scale(path, gpus))
            except ValueError as e:  # SpecError and no-plan errors: say which case, rank the rest
                failed.append(f"{case}: {str(e).splitlines()[0]}")
                continue
            if best_excluded:
                joint.append((case, best_excluded))
            ratios.append((case, 1 + best_excluded.get("faster_pct", 0.0) / 100))
            for name, g in per_limit.items():
                total[name] = total.get(name, 0.0) + g
                if g > worst.get(name, (-1.0, ""))[0]:
                    worst[name] = (g, case)
    rows = [(n, total[n], worst[n][0], worst[n][1]) for n in total]
    rows.sort(key=lambda r: (-r[1], r[0]))
    return rows, joint, ratios, failed


def print_ranking(examples: list[Path], gpu_counts=GPU_COUNTS, out: Path | None = RESULTS) -> None:
    """Print the ranking and, unless `out` is None, write it there as JSON (same input, same bytes)."""
    rows, joint, ratios, failed = ranking(examples, gpu_counts)
    if out is not None:
        record = {"examples": [p.stem for p in examples], "gpus": list(gpu_counts),
                  "limits": [{"limit": n, "summed_gain_pct": round(t * 100, 2), "largest_gain_pct": round(b * 100, 2),
                              "case_of_largest": c} for n, t, b, c in rows],
                  "every_limit_lifted": [{"case": c, "layout": b["layout"], "faster_pct": round(b["faster_pct"], 2)}
                                         for c, b in joint],
                  "best_runnable_over_best": [{"case": c, "ratio": round(r, 4)} for c, r in ratios],
                  "not_planned": failed}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(f"\nruntime limits by what lifting each alone would gain ({len(examples)} examples x "
          f"{', '.join(f'{g:,}' for g in gpu_counts)} GPUs)")
    print(f"{'limit':36} {'summed gain %':>14} {'largest %':>10}  case of the largest")
    for name, tot, big, case in rows:
        print(f"{name:36} {tot * 100:>14.2f} {big * 100:>10.2f}  {case}")
    for case, best in joint:
        print(f"  {case}: every limit lifted, {best['layout']} is {best['faster_pct']:.2f} % faster")
    worst = max(ratios, key=lambda cr: cr[1], default=None)
    if worst is not None:
        print(f"  best runnable over best layout (step time): largest {worst[1]:.4f} ({worst[0]}) of "
              f"{len(ratios)} cases")
    for line in failed:
        print(f"  not planned: {line}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", default="", help="comma-separated spec paths (default: every examples/*.yaml)")
    ap.add_argument("--gpus", default=",".join(map(str, GPU_COUNTS)))
    ap.add_argument("--out", type=Path, default=RESULTS, help="where to write the ranking as JSON")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.examples.split(",") if p] or sorted((ROOT / "examples").glob("*.yaml"))
    print_ranking(paths, tuple(int(g) for g in args.gpus.split(",")), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
