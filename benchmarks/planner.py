"""Planning time: how long `vlac.plan` takes to search every legal layout, after import and with
the graph already lowered (lowering is timed apart: it belongs to `vlac.lower`).

Cases: the flagship (examples/vla_10b_moe_h100.yaml, 256 H100), the flagship on 16,384 H100
(cluster.nodes=2048), and a dense 405B decoder (Llama 3 405B dimensions, 126 layers) on 16,384
H100 with nothing pinned. Each is planned `--repeat` times; the median is compared with its
budget (1 s for the flagship, 5 s at 16,384 GPUs) as a ratio.

With --limits it then ranks vlac's runtime limits by what lifting each would gain across the
examples at 8, 256 and 16,384 GPUs (benchmarks/limit_gains.py).

Run: python benchmarks/planner.py [--repeat N] [--limits]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import vlac

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIP = ROOT / "examples" / "vla_10b_moe_h100.yaml"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import LLAMA3_405B, Case, spec  # noqa: E402  the same model spec the fidelity cases use


def cases():
    yield "flagship, 256 GPUs", vlac.load(FLAGSHIP), 1.0
    yield "flagship, 16,384 GPUs", vlac.load(FLAGSHIP, ["cluster.nodes=2048"]), 5.0
    dense = Case("dense-405b-16384gpu", "", LLAMA3_405B, 16384, 8192, 2048, {}, 0.0)
    yield "dense 405B, 16,384 GPUs", vlac.load(spec(dense)), 5.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--limits", action="store_true", help="also rank the runtime limits by what lifting each gains")
    args = ap.parse_args(argv)
    print(f"{'case':26} {'lower s':>8} {'plan s (median)':>16} {'budget s':>9} {'ratio':>6} {'legal':>9} "
          f"{'costed':>8} {'pruned':>8}  chosen")
    worst = 0.0
    for name, exp, budget in cases():
        t0 = time.perf_counter()
        g = vlac.lower(exp)
        t_lower = time.perf_counter() - t0
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            p = vlac.plan(exp, graph=g)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        worst = max(worst, med / budget)
        print(f"{name:26} {t_lower:>8.2f} {med:>16.3f} {budget:>9.1f} {med / budget:>6.2f} {p.search['legal']:>9,} "
              f"{p.evaluated:>8,} {p.pruned:>8,}  {p.chosen.layout.short()}")
    print(f"\nworst ratio of planning time to budget: {worst:.2f} (below 1 is within budget)")
    if args.limits:
        from limit_gains import print_ranking

        print_ranking(sorted((ROOT / "examples").glob("*.yaml")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
