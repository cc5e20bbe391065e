"""How many architecture-search candidates this machine evaluates per second, and what limits it.

    python benchmarks/search.py [--spec examples/vla_10b_moe_h100.yaml]
                                [--space examples/search/flagship_moe.yaml] [--budget 16] [--workers N]

Draws `budget` candidates (seeded) from the space, then

1. evaluates them in this process, timing each phase (validate the spec, lower through the
   GraphCache, plan, read the metrics) — the serial rate;
2. evaluates the same candidates on `workers` processes (default: this machine's cores) — the
   parallel rate, printed against the ideal `workers x serial` as a ratio;
3. lowers a few of them directly (`vlac.lower`) to show what the cache saves, and checks that
   each cached graph equals its direct lowering (exit status 1 if one differs).

The goal (issue 7) is over 100 candidates/s for the flagship family on 2 cores; the measured
rate is printed against it. Results go to benchmarks/results/search.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import vlac
from vlac.compiler.graph_cache import graph_differences
from vlac.search import Evaluator, Search, default_workers, evaluate_all
from vlac.search_cli import read_space_file
from vlac.search_metrics import compute_metrics

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "search.json"
GOAL_PER_S = 100.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default=str(ROOT / "examples" / "vla_10b_moe_h100.yaml"))
    p.add_argument("--space", default=str(ROOT / "examples" / "search" / "flagship_moe.yaml"))
    p.add_argument("--profile", default=None, help="profile of the spec, e.g. tiny")
    p.add_argument("--budget", type=int, default=16, help="candidates drawn from the space")
    p.add_argument("--workers", type=int, default=None, help="processes for the parallel pass (default: cores)")
    p.add_argument("--direct", type=int, default=3, help="candidates also lowered directly, for comparison")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def timed_serial(ev: Evaluator, cands) -> dict[str, list[float]]:
    """The steps of Evaluator.evaluate, timed one by one (failures are timed up to where they stop)."""
    phases: dict[str, list[float]] = {"validate": [], "lower": [], "plan": [], "metrics": []}
    for c in cands:
        t0 = time.perf_counter()
        try:
            exp = ev.experiment(c.params)
        except vlac.spec.SpecError:
            phases["validate"].append(time.perf_counter() - t0)
            continue
        t1 = time.perf_counter()
        graph = ev.cache.lower(exp)
        t2 = time.perf_counter()
        plan = vlac.plan(exp, graph=graph)
        t3 = time.perf_counter()
        compute_metrics(exp, plan.to_json())
        t4 = time.perf_counter()
        for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            phases[name].append(dt)
    return phases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = read_space_file(Path(args.space))
    search = Search(args.spec, cfg["space"], objective=cfg.get("objective") or "max:tokens_per_s",
                    constraints=cfg["constraints"], strategy="random", budget=args.budget, seed=args.seed,
                    profile=args.profile)
    cands = []
    while (c := search.ask()) is not None:
        cands.append(c)
    workers = args.workers or default_workers()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(cands)} candidates from {Path(args.space).name} on {Path(args.spec).name}; "
          f"{default_workers()} cores ({platform.processor() or platform.machine()}), python {platform.python_version()}, "
          f"load average {load:.1f} (rates are per wall second: other load on the cores slows them)")

    # warm-up: the first lowering in a process pays for torch's meta-kernel caches
    warm = Evaluator(search.evaluator.base, search.source, search.objective, search.constraints)
    warm.evaluate(cands[0])

    ev = Evaluator(search.evaluator.base, search.source, search.objective, search.constraints)
    t0 = time.perf_counter()
    phases = timed_serial(ev, cands)
    serial_s = time.perf_counter() - t0
    serial_rate = len(cands) / serial_s
    stats = copy.deepcopy(ev.cache.stats)  # before the comparison below adds to it

    t0 = time.perf_counter()
    results = evaluate_all(Evaluator(search.evaluator.base, search.source, search.objective, search.constraints),
                           cands, workers=workers, progress=False)
    parallel_s = time.perf_counter() - t0
    parallel_rate = len(cands) / parallel_s

    direct, mismatches = [], 0
    for c in cands[:args.direct]:
        try:
            exp = ev.experiment(c.params)
        except vlac.spec.SpecError:
            continue
        t0 = time.perf_counter()
        g = vlac.lower(exp)
        direct.append(time.perf_counter() - t0)
        diffs = graph_differences(ev.cache.lower(exp), g)
        if diffs:
            mismatches += 1
            print(f"MISMATCH for {c.label()}:\n  " + "\n  ".join(diffs))

    n = len(cands)
    print(f"\nserial (1 process): {serial_rate:.2f} candidates/s ({serial_s:.1f} s)")
    total = sum(sum(v) for v in phases.values())
    for name, values in phases.items():
        if values:
            print(f"  {name:9s} {sum(values) / n * 1e3:9.1f} ms/candidate  {sum(values) / total * 100:5.1f} %"
                  f"  (median {statistics.median(values) * 1e3:.1f} ms over {len(values)})")
    print(f"  graph cache: {stats.lowered} lowerings ({stats.lower_seconds:.2f} s), {stats.derived} derived "
          f"({stats.derive_seconds / max(1, stats.derived) * 1e3:.1f} ms each), {stats.shared} shared; "
          f"not derivable: {stats.not_derivable or 'none'}")
    ideal = serial_rate * workers
    print(f"parallel ({workers} processes): {parallel_rate:.2f} candidates/s ({parallel_s:.1f} s, pool start included); "
          f"measured / ideal {workers} x serial = {parallel_rate / ideal:.2f}")
    if direct:
        cache_ms = sum(phases["lower"]) / len(phases["lower"]) * 1e3
        print(f"lowering directly: {statistics.mean(direct) * 1e3:.0f} ms/candidate; through the cache: {cache_ms:.0f} ms "
              f"(ratio {cache_ms / (statistics.mean(direct) * 1e3):.3f}); cached graphs equal to direct lowering: "
              f"{len(direct) - mismatches}/{len(direct)}")
    print(f"goal {GOAL_PER_S:.0f} candidates/s: measured / goal = {parallel_rate / GOAL_PER_S:.3f}")
    limit = max(phases, key=lambda k: sum(phases[k]))
    print(f"what limits: {limit} ({sum(phases[limit]) / total * 100:.0f} % of serial time)")
    statuses = {s: sum(r.status == s for r in results) for s in ("ok", "rejected", "infeasible", "invalid", "error")}
    print(f"outcomes: {statuses}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "spec": Path(args.spec).name, "space": Path(args.space).name, "candidates": n, "workers": workers,
        "serial_per_s": serial_rate, "parallel_per_s": parallel_rate, "parallel_over_ideal": parallel_rate / ideal,
        "goal_per_s": GOAL_PER_S, "ms_per_candidate": {k: sum(v) / n * 1e3 for k, v in phases.items()},
        "direct_lower_ms": statistics.mean(direct) * 1e3 if direct else None,
        "cache": stats.as_dict(), "outcomes": statuses,
        "machine": {"cores": default_workers(), "python": platform.python_version(), "load_average": load},
    }, indent=2, sort_keys=True) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
