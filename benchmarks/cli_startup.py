"""Start-up time of the `vlac` command: `vlac --help` and `vlac validate` on the tiny example,
each run `--repeat` times as a fresh process; the median wall time is compared with the goal of
one second as a ratio, and `python -X importtime` names the slowest imports (torch must not be
among them: it belongs to the commands that lower, plan or run).

Run: python benchmarks/cli_startup.py [--repeat N]   (exit 1 when a median is over the goal)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 1.0
COMMANDS = {"vlac --help": ["--help"], "vlac validate": ["validate", str(ROOT / "examples" / "tiny_vla.yaml")]}


def wall_time(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vlac.cli", *args], check=True, capture_output=True)
    return time.perf_counter() - t0


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
    args = ap.parse_args()
    over = False
    for label, argv in COMMANDS.items():
        times = [wall_time(argv) for _ in range(args.repeat)]
        median = statistics.median(times)
        over |= median > GOAL_S
        print(f"{label:<16} median {median:.3f} s over {args.repeat} runs; {median / GOAL_S:.2f} x the {GOAL_S:.0f} s goal")
    print("slowest imports of vlac.cli (cumulative):")
    for seconds, name in slowest_imports():
        print(f"  {seconds:.3f} s  {name}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
