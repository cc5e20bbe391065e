"""Human-readable plan and graph reports (rich tables). Every figure comes from the Plan/Graph."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from vlac.compiler.graph import Graph
from vlac.compiler.plan import Plan


def _si(x: float, unit: str = "") -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.2f} {prefix}{unit}"
    return f"{x:.3g} {unit}".strip()


def print_graph(con: Console, g: Graph) -> None:
    t = Table(title=f"Per-layer costs, micro-batch {g.micro_batch} x {g.seq_len} tokens (lowered in {g.lower_seconds:.2f} s)")
    for col in ("layer", "params", "FLOPs fwd+bwd", "saved (none)", "saved (selective)", "saved (full)", "FP8 share"):
        t.add_column(col, justify="right" if col != "layer" else "left")
    for lc in g.layers():
        total = lc.flops_fwd + lc.flops_bwd
        t.add_row(lc.label, _si(lc.params), _si(total, "FLOP"), _si(lc.saved["none"], "B"),
                  _si(lc.saved["selective"], "B"), _si(lc.saved["full"], "B"),
                  f"{lc.flops_fp8 / total * 100:.0f} %" if total else "-")
    con.print(t)


def print_plan(con: Console, p: Plan) -> None:
    j = p.to_json()
    m, pl, pr = j["model"], j["plan"], j["predicted"]
    con.print(f"[bold]{p.experiment}[/]: {_si(m['params_total'])} parameters ({_si(m['params_active'])} active), "
              f"{_si(m['flops_per_token'], 'FLOP')} per token; {j['cluster']['gpus']} x {j['cluster']['gpu']}",
              highlight=False)
    if not p.feasible:
        con.print("[bold red]no layout fits in memory[/]; closest:", highlight=False)
        for tip in p.advice:
            con.print(f"  - {tip}", highlight=False)
    est = p.chosen
    layout = Table(title="Plan", show_header=False)
    layout.add_row("layout", est.layout.short())
    layout.add_row("mesh (outer -> inner)", " x ".join(f"{d}{pl[d]}" for d in pl["mesh_order"]) + f", ep{pl['ep']} folded")
    layout.add_row("micro-batches", f"{pl['num_microbatches']} x {pl['microbatch_size']} sequences")
    layout.add_row("pipeline stages", "; ".join(f"{c[0]}..{c[-1]}" for c in pl["stage_split"]))
    layout.add_row("step time", f"{pr['step_time_s']:.3f} s")
    layout.add_row("tokens/s", f"{pr['tokens_per_s']:,.0f}")
    layout.add_row("MFU", f"{pr['mfu'] * 100:.1f} %  ({pr['tflops_per_gpu']:.0f} TFLOP/s per GPU)")
    layout.add_row("training", f"{pr['total_steps']:,} steps, {pr['training_days']:.2f} days, {pr['gpu_hours']:,.0f} GPU-hours")
    fp8 = j["fp8"]
    if fp8["enabled"]:
        layout.add_row("FP8", f"{fp8['recipe']['name']} {fp8['recipe']['format']}, {fp8['gemm_flops_share'] * 100:.0f} % of "
                              f"GEMM FLOPs, predicted speedup x{fp8.get('predicted_speedup', 1):.2f}")
    layout.add_row("search", f"{p.evaluated:,} layouts costed, {p.pruned:,} pruned, {p.plan_seconds:.2f} s")
    con.print(layout)

    mem = Table(title="Memory per GPU")
    mem.add_column("part")
    mem.add_column("GB", justify="right")
    for k, v in pr["memory_gb"].items():
        mem.add_row(k, f"{v:.2f}")
    mem.add_row("usable", f"{j['cluster']['usable_memory_gb']:.2f}")
    tim = Table(title="Step time")
    tim.add_column("part")
    tim.add_column("s", justify="right")
    tim.add_column("share", justify="right")
    for k, v in pr["time_s"].items():
        tim.add_row(k, f"{v:.4f}", f"{v / pr['step_time_s'] * 100:.1f} %")
    con.print(mem)
    con.print(tim)

    if p.alternatives:
        alt = Table(title="Alternatives (best of each other family)")
        for col in ("layout", "step s", "MFU", "peak GB"):
            alt.add_column(col)
        for a in j["alternatives"]:
            alt.add_row(a["summary"], f"{a['step_time_s']:.3f}", f"{a['mfu'] * 100:.1f} %", f"{a['peak_memory_gb']:.1f}")
        con.print(alt)
    if p.rejected:
        rej = Table(title="Rejected families")
        rej.add_column("family")
        rej.add_column("why")
        for r in p.rejected[:12]:
            rej.add_row(r["family"], r["reason"])
        if len(p.rejected) > 12:
            rej.add_row("...", f"{len(p.rejected) - 12} more in --json")
        con.print(rej)
