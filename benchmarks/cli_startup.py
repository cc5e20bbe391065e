"""Start-up time of the `vlac` command: `vlac --help` and `vlac validate` on the tiny example,
each run `--repeat` times as a fresh process; the median wall time is compared with the goal of
one second as a ratio, and `python -X importtime` names the slowest imports (torch must not be
among them: it belongs to the commands that lower, plan or run). The median CPU time (user +
system) of the same runs is reported beside it: on a machine shared with other work the wall time
includes waiting for a core, the CPU time does not. `--cli FILE` times another copy of
vlac/cli.py (e.g. `git show REV:vlac/cli.py > /tmp/cli_before.py`) in place of the installed one;
`--record LABEL` stores the figures under that label in benchmarks/results/cli_startup.json.

Run: python benchmarks/cli_startup.py [--repeat N] [--cli FILE] [--record LABEL]
     (exit 1 when a median wall time is over the goal)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 1.0
RESULTS = ROOT / "benchmarks" / "results" / "cli_startup.json"
# runs a copy of vlac/cli.py as the module vlac.cli_under_test (its relative imports resolve in vlac)
RUN_FILE = ("import importlib.util, sys; path = sys.argv.pop(1); "
            "spec = importlib.util.spec_from_file_location('vlac.cli_under_test', path); "
            "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m); m.main()")
COMMANDS = {"vlac --help": ["--help"], "vlac validate": ["validate", str(ROOT / "examples" / "tiny_vla.yaml")]}


def run_times(args: list[str], cli: Path | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh `vlac ARGS` process."""
    command = [sys.executable, "-m", "vlac.cli"] if cli is None else [sys.executable, "-c", RUN_FILE, str(cli)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([*command, *args], check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def slowest_imports(n: int = 5) -> list[tuple[float, str]]:
    """The `n` top-level imports of `import vlac.cli` with the largest cumulative time (seconds)."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", "import vlac.cli"], capture_output=True, text=True)
    rows = []
    for line in res.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].rstrip()
            if len(name) - len(name.lstrip()) <= 3:  # " vlac.cli" itself and what it imports directly
                rows.append((int(parts[1]) / 1e6, name.strip()))
    return sorted(rows, reverse=True)[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cli", type=Path, help="time this copy of vlac/cli.py instead of the installed one")
    ap.add_argument("--record", metavar="LABEL", help="store the medians under LABEL in " + str(RESULTS.relative_to(ROOT)))
    args = ap.parse_args()
    over = False
    record: dict = {"repeat": args.repeat, "cli": str(args.cli or "vlac/cli.py"),
                    "load_average_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count()}
    for label, argv in COMMANDS.items():
        walls, cpus = zip(*(run_times(argv, args.cli) for _ in range(args.repeat)))
        median, cpu = statistics.median(walls), statistics.median(cpus)
        over |= median > GOAL_S
        record[label] = {"wall_s": round(median, 3), "cpu_s": round(cpu, 3)}
        print(f"{label:<16} median {median:.3f} s wall, {cpu:.3f} s CPU over {args.repeat} runs; "
              f"{median / GOAL_S:.2f} x the {GOAL_S:.0f} s goal")
    print(f"(load average {record['load_average_1min']} on {record['cpu_count']} cores while measuring)")
    if args.record:
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        results[args.record] = record
        RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print("slowest imports of vlac.cli (cumulative):")
    for seconds, name in slowest_imports():
        print(f"  {seconds:.3f} s  {name}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
