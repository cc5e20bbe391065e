"""How many architecture-search candidates this machine evaluates per second, and whether the fast
path agrees with the full one: one run, every ratio measured in it.

    python benchmarks/search.py [--spec examples/vla_10b_moe_h100.yaml]
                                [--space examples/search/flagship_moe.yaml]
                                [--budget 300 5000] [--sample 6] [--workers N] [--profile 60]

1. The README's search (the grid of --space): wall time, of which lowering the architectures'
   references (once per architecture) and the rest, the evaluation; candidates per second; the
   same split in CPU seconds, which other load on a shared machine does not inflate.
2. A random search of each --budget candidates of the flagship on a wider space (the README's
   expert counts, routings and widths, depths 8 to 112 and two token budgets: 5,040 points), on
   --workers processes: wall time and candidates per second, and CPU seconds: candidates per
   second on as many otherwise idle cores.
3. Where a one-process random search of --profile candidates spends its time (cProfile): lowering
   architecture references, costing layouts (of which the cost model's passes and its pipeline
   partitions), the depths' legal layout spaces and combining architectures' graphs in closed
   form (vlac.search.shape_fit); how many graphs were combined, lowered, and why any fell back.
   cProfile's own overhead per call inflates parts made of many small calls (py-spy, sampling,
   does not): read the parts against each other, not as absolute costs.
4. Agreement: --sample candidates of the first random search evaluated again by the full path
   (lower each one directly, plan every layout): status, layout, parameters and FLOPs compared
   exactly, step time and peak memory relative to the full path; the time per candidate of each
   path and their ratio. Exit status 1 on any disagreement.

Goals (issue 17): the README's search under a second of evaluation, 5,000 candidates under a
minute, over 100 candidates/s; each measured figure is printed against its goal. Results go to
benchmarks/results/search.json, with `uptime` before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from vlac.compiler.planner import plan as compiler_plan
from vlac.search import Search, default_workers
from vlac.search.metrics import compute_metrics
from vlac.search_cli import read_space_file

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "search.json"
GOALS = {"readme_eval_s": 1.0, "random_s": 60.0, "per_s": 100.0}
WIDE = {"moe.experts": [8, 16, 32, 64], "moe.top_k": [1, 2],
        "backbone.hidden,backbone.heads": [[2048, 16], [2560, 20], [3072, 24]],
        "backbone.layers": {"range": [8, 112], "step": 1}, "train.total_tokens": ["1T", "2T"]}
EXACT = ("params_total", "params_active", "flops_per_token")
RELATIVE = ("step_time_s", "peak_memory_gb")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default=str(ROOT / "examples" / "vla_10b_moe_h100.yaml"))
    p.add_argument("--space", default=str(ROOT / "examples" / "search" / "flagship_moe.yaml"))
    p.add_argument("--budget", type=int, nargs="+", default=[5000],
                   help="candidates of the random search (several: one search each)")
    p.add_argument("--sample", type=int, default=6, help="random-search candidates also evaluated by the full path")
    p.add_argument("--workers", type=int, default=None, help="processes for the random search (default: cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=60, help="candidates of the profiled one-process search (0: none)")
    return p.parse_args(argv)


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished workers: less sensitive than wall time to
    the other load on a shared machine."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def uptime() -> str:
    """`uptime`'s line: the machine's load, which slows every wall-clock rate here (several
    sessions share these cores)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "uptime unavailable"


def readme_search(args: argparse.Namespace) -> dict:
    cpu0 = cpu_seconds()
    cfg = read_space_file(Path(args.space))
    s = Search(args.spec, cfg["space"], objective=cfg.get("objective") or "max:tokens_per_s",
               constraints=cfg["constraints"])
    s.run(workers=1, progress=False)
    cpu = cpu_seconds() - cpu0
    stats = s.evaluator.cache.stats
    lowering = stats.lower_seconds + stats.derive_seconds
    return {"candidates": len(s.results), "wall_s": s.seconds, "lowering_s": lowering,
            "evaluation_s": s.seconds - lowering, "per_s": len(s.results) / s.seconds,
            # the same split in CPU seconds (this process; lowering as the cache measured it)
            "cpu_s": cpu, "lowering_cpu_s": stats.cpu_seconds, "evaluation_cpu_s": cpu - stats.cpu_seconds,
            "cpu_s_per_candidate": cpu / len(s.results),
            "references_lowered": stats.lowered, "fast": dict(s.evaluator.fast_path.stats),
            "closed_form": dict(s.evaluator.fast_path.fit.stats),
            "best": s.best.params if s.best else None}


def readme_search_on(args: argparse.Namespace, workers: int) -> dict:
    """The README's search as `vlac search` runs it by default (one process per core): wall
    seconds, lowering included (each forked worker lowers what the parent has not)."""
    cfg = read_space_file(Path(args.space))
    s = Search(args.spec, cfg["space"], objective=cfg.get("objective") or "max:tokens_per_s",
               constraints=cfg["constraints"])
    s.run(workers=workers, progress=False)
    return {"candidates": len(s.results), "workers": workers, "wall_s": s.seconds,
            "references_lowered_here": s.evaluator.cache.stats.lowered}


def random_search(args: argparse.Namespace, budget: int, workers: int) -> tuple[Search, dict]:
    cpu0 = cpu_seconds()
    s = Search(args.spec, WIDE, strategy="random", budget=budget, seed=args.seed, objective="min:training_days",
               constraints=["params_active >= 2B", "params_total >= 8B"])
    s.run(workers=workers, progress=False)
    counts = s.counts()
    cpu = cpu_seconds() - cpu0
    return s, {"candidates": len(s.results), "workers": workers, "wall_s": s.seconds,
               "per_s": len(s.results) / s.seconds, "cpu_s": cpu, "cpu_s_per_candidate": cpu / len(s.results),
               # what `workers` otherwise idle cores would give: candidates per CPU second each
               "per_s_on_idle_cores": workers * len(s.results) / cpu,
               "outcomes": counts, "load_average_after": os.getloadavg()[0]}


# (file, function) of each part of the profile, as cProfile names them
PROFILED = {"lowering references": ("compiler/graph_cache.py", "lower"),
            "costing layouts": ("search/fast_plan.py", "choose"),
            "cost model passes": ("compiler/cost_model.py", "evaluate"),
            "pipeline partitions": ("compiler/cost_model.py", "composition"),
            "layout spaces": ("search/fast_plan.py", "get"),
            "closed-form graphs": ("search/shape_fit.py", "combine")}


def profile_search(args: argparse.Namespace) -> dict:
    """Cumulative seconds of each PROFILED part in a fresh one-process random search."""
    import cProfile
    import pstats

    s = Search(args.spec, WIDE, strategy="random", budget=args.profile, seed=args.seed + 1,
               objective="min:training_days", constraints=["params_active >= 2B", "params_total >= 8B"])
    prof = cProfile.Profile()
    prof.enable()
    s.run(workers=1, progress=False)
    prof.disable()
    stats = pstats.Stats(prof).stats
    parts = {}
    for name, (path, fn) in PROFILED.items():
        hits = [(v[1], v[3]) for (f, _, func), v in stats.items() if f.endswith(path) and func == fn]
        parts[name] = {"calls": sum(h[0] for h in hits), "seconds": sum(h[1] for h in hits)}
    return {"candidates": len(s.results), "wall_s": s.seconds, "architectures": len(s.evaluator.fast_path.architectures),
            "fast": dict(s.evaluator.fast_path.stats), "closed_form": dict(s.evaluator.fast_path.fit.stats),
            "parts": parts}


def agreement(s: Search, n: int, seed: int) -> dict:
    """The full path on a sample of the random search's candidates, against its fast results."""
    sample = random.Random(seed).sample(s.ordered(), min(n, len(s.results)))
    rows, full_s = [], 0.0
    fast_s = sum(r.seconds for r in sample)
    for r in sample:
        exp = s.evaluator.experiment(r.params)
        t0 = time.perf_counter()
        p = compiler_plan(exp)  # lowers the experiment directly and costs every layout
        m = compute_metrics(exp, p.to_json())
        full_s += time.perf_counter() - t0
        status_ok = r.status in ("ok", "rejected") if p.feasible else r.status == "infeasible"
        rows.append({"params": r.params, "status_agrees": status_ok,
                     "layout_agrees": r.layout == p.chosen.layout.short(),
                     "exact_agree": all(r.metrics[k] == m[k] for k in EXACT),
                     **{f"{k}_rel_diff": abs(r.metrics[k] / m[k] - 1) for k in RELATIVE}})
    worst = {k: max(row[f"{k}_rel_diff"] for row in rows) for k in RELATIVE}
    agree = all(row["status_agrees"] and row["layout_agrees"] and row["exact_agree"] for row in rows) \
        and all(v <= 1e-3 for v in worst.values())
    return {"sampled": len(rows), "agree": agree, "worst_rel_diff": worst,
            "fast_s_per_candidate": fast_s / len(rows), "full_s_per_candidate": full_s / len(rows),
            "full_over_fast": (full_s / len(rows)) / (fast_s / len(rows)), "rows": rows}


def closed_form_line(st: dict) -> str:
    """How the architectures' reference graphs were obtained (vlac.search.shape_fit)."""
    off = ", ".join(f"{n} x {why}" for why, n in st["not_combinable"].items()) or "none"
    return (f"architecture graphs: {st['combined']} combined in closed form over the shape fields ({st['verified']} "
            f"of them, each topology's first, also lowered to check it), {st['lowered']} lowered in all; "
            f"fell back to lowering: {off}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workers = args.workers or default_workers()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    uptime_before = uptime()
    print(uptime_before)
    print(f"{default_workers()} cores ({platform.processor() or platform.machine()}), python "
          f"{platform.python_version()}, load average {load:.1f} (rates are per wall second: other load slows them)")

    readme = readme_search(args)
    print(f"\nREADME search ({Path(args.space).name}): {readme['candidates']} candidates in {readme['wall_s']:.2f} s "
          f"({readme['per_s']:.1f}/s): lowering {readme['references_lowered']} references {readme['lowering_s']:.2f} s, "
          f"evaluation {readme['evaluation_s']:.2f} s (goal < {GOALS['readme_eval_s']:.0f} s: measured / goal "
          f"{readme['evaluation_s'] / GOALS['readme_eval_s']:.2f}); in CPU seconds lowering {readme['lowering_cpu_s']:.2f}, "
          f"evaluation {readme['evaluation_cpu_s']:.2f} (measured / goal {readme['evaluation_cpu_s'] / GOALS['readme_eval_s']:.2f}), "
          f"{readme['cpu_s_per_candidate'] * 1e3:.0f} CPU ms/candidate; fast path decided {readme['fast']['decided']}, "
          f"costed {readme['fast']['costed']:,} of {readme['fast']['legal']:,} legal layouts; "
          + closed_form_line(readme["closed_form"]))

    default = readme_search_on(args, workers) if workers > 1 else None
    if default:
        print(f"README search on {workers} processes (vlac search's default): {default['wall_s']:.2f} s wall, lowering "
              f"included ({default['references_lowered_here']} references lowered before forking), against "
              f"{readme['wall_s']:.2f} s in one process: {default['wall_s'] / readme['wall_s']:.2f} of it")

    searches = [random_search(args, budget, workers) for budget in args.budget]
    s = searches[0][0]
    for _, rnd in searches:
        print(f"random search: {rnd['candidates']} candidates on {workers} processes in {rnd['wall_s']:.1f} s "
              f"({rnd['per_s']:.1f}/s, {rnd['cpu_s_per_candidate']:.3f} CPU s/candidate; goal < {GOALS['random_s']:.0f} s: measured / goal {rnd['wall_s'] / GOALS['random_s']:.2f}; "
              f"goal {GOALS['per_s']:.0f}/s: measured / goal {rnd['per_s'] / GOALS['per_s']:.2f}); {rnd['cpu_s']:.1f} CPU s in all: "
              f"{rnd['per_s_on_idle_cores']:.0f}/s on {workers} idle cores (measured / goal "
              f"{rnd['per_s_on_idle_cores'] / GOALS['per_s']:.2f}); outcomes {rnd['outcomes']}; "
              f"load average {rnd['load_average_after']:.1f} after")

    prof = profile_search(args) if args.profile else None
    if prof:
        print(f"profile of a one-process random search: {prof['candidates']} candidates of {prof['architectures']} "
              f"architectures in {prof['wall_s']:.1f} s under cProfile: "
              + ", ".join(f"{k} {v['seconds']:.1f} s ({v['seconds'] / prof['wall_s']:.0%}, {v['calls']} calls)"
                          for k, v in prof["parts"].items())
              + f"; costed {prof['fast']['costed']:,} of {prof['fast']['legal']:,} legal layouts; "
              + closed_form_line(prof["closed_form"]))

    agree = agreement(s, args.sample, args.seed)
    print(f"fast vs full on {agree['sampled']} sampled candidates: {'agree' if agree['agree'] else 'DISAGREE'} "
          f"(status, layout, parameters and FLOPs exact; worst relative difference "
          + ", ".join(f"{k} {v:.1e}" for k, v in agree["worst_rel_diff"].items())
          + f"); full path {agree['full_s_per_candidate']:.2f} s/candidate, fast {agree['fast_s_per_candidate'] * 1e3:.1f} ms "
          f"in the search: full / fast = {agree['full_over_fast']:.0f}")
    for row in agree["rows"]:
        if not (row["status_agrees"] and row["layout_agrees"] and row["exact_agree"]):
            print(f"  DISAGREE {row}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "spec": Path(args.spec).name, "space": Path(args.space).name, "wide_space": WIDE, "goals": GOALS,
        "readme": readme, "readme_default_workers": default, "random": [rnd for _, rnd in searches], "profile": prof, "agreement": agree,
        "machine": {"cores": default_workers(), "python": platform.python_version(), "load_average": load,
                    "uptime_before": uptime_before, "uptime_after": uptime()},
    }, indent=2, sort_keys=True, default=str) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if agree["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
