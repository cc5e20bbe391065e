"""Human-readable plan and graph reports (rich tables). Every figure comes from the Plan/Graph."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from vlac.compiler.error_band import error_band
from vlac.compiler.number_format import UNIT_CONVENTION, data_size, duration, si
from vlac.compiler.plan import Plan

if TYPE_CHECKING:  # vlac.compiler.graph imports torch; the CLI starts without it
    from vlac.compiler.graph import Graph


def _si(x: float, unit: str = "") -> str:
    """The compiler's SI formatting, keeping three significant digits below 1000 (a fraction
    prints as 0.25, not 0)."""
    return si(x, unit, small=".3g")


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


def _runtime_line(runtime: dict) -> str:
    """Whether vlac's runtime runs the plan, and what its limits set aside."""
    if not runtime["runs"]:
        return (f"[bold red]not run by vlac's runtime[/] ({runtime['why']}): " + "; ".join(runtime["unsupported"]))
    if runtime.get("not_as_timed"):
        return (f"[yellow]runs, but slower than timed here[/] ({runtime['why']}): "
                + "; ".join(runtime["not_as_timed"]))
    out = "runs as planned"
    if runtime["excluded_total"]:
        out += f"; {runtime['excluded_total']:,} layouts set aside that it cannot run yet"
        best = runtime.get("best_excluded")
        if best:
            out += f" (best of them {best['layout']}, {best['faster_pct']:.1f} % faster)"
    return out


def _kernel_costs_line(costs: dict) -> str:
    """Where the step time's kernel costs came from: measured (which file) or assumed."""
    by_source: dict[str, list[str]] = {}
    for name, k in costs["kernels"].items():
        if k["source"] in ("measured", "assumed"):
            by_source.setdefault(k["source"], []).append(f"{name} {k['hbm_efficiency'] * 100:.0f} %")
    parts = [f"{src} ({', '.join(names)} of HBM bandwidth)" for src, names in sorted(by_source.items())]
    f = costs.get("file")
    if f:
        parts.append(f"file {f['name']}" + (f" ({f['device']})" if f.get("device") else "")
                     + ("" if f["applied"] else f": not applied, {f['note']}"))
    return "; ".join(parts) or "no runtime kernel in the step time"


def print_plan(con: Console, p: Plan) -> None:
    j = p.to_json()
    m, pl, pr = j["model"], j["plan"], j["predicted"]
    con.print(f"[bold]{p.experiment}[/]: {_si(m['params_total'])} parameters ({_si(m['params_active'])} active), "
              f"{_si(m['flops_per_token'], 'FLOP')} per token (forward + backward); {j['cluster']['gpus']} x "
              f"{j['cluster']['gpu']} ({j['cluster']['nodes']} nodes of {j['cluster']['gpus_per_node']})",
              highlight=False)
    if not p.feasible:
        con.print("[bold red]no layout fits in memory[/]; the closest layout is shown. What would make it fit:",
                  highlight=False)
        for tip in p.advice:
            con.print(f"  - {tip}", highlight=False)
    for note in p.pin_notes:
        con.print(f"[yellow]pins:[/] {note}", highlight=False)
    est = p.chosen
    layout = Table(title="Plan" if p.feasible else "Plan: INFEASIBLE (closest layout; it does not fit in memory)",
                   show_header=False)
    layout.add_row("layout", est.layout.short())
    layout.add_row("mesh (outer -> inner)", " x ".join(f"{d}{pl[d]}" for d in pl["mesh_order"])
                   + f", experts: ep{pl['ep']} x etp{pl['expert_tensor_parallel']} folded over tp x cp x dp")
    for group, where in pr["placement"].items():
        layout.add_row(f"  {group} group", where)
    layout.add_row("micro-batches", f"{pl['num_microbatches']} x {pl['microbatch_size']} sequences")
    if pl["pp"] > 1:
        layout.add_row("pipeline", f"{pl['schedule']}, {pl['virtual_stages']} chunk(s) per rank; chunks "
                       + "; ".join(f"{c[0]}..{c[-1]}" for c in pl["stage_split"]))
    layout.add_row("recompute per stage", ", ".join(pl["recompute_per_stage"]))
    layout.add_row("step time", duration(pr["step_time_s"]))
    layout.add_row("  expected error", error_band(j["fp8"]["enabled"], m["params_expert"] > 0,
                                                     stack=j["search"].get("stack", {}).get("preset")))
    layout.add_row("tokens/s", f"{pr['tokens_per_s']:,.0f} ({pr['tokens_per_s'] / j['cluster']['gpus']:,.0f} per GPU)")
    layout.add_row("MFU", f"{pr['mfu'] * 100:.1f} % of BF16 peak ({pr['tflops_per_gpu']:.0f} model TFLOP/s per GPU)")
    layout.add_row("training", f"{pr['total_steps']:,} steps, {pr['training_days']:.2f} days, "
                               f"{pr['gpu_hours']:,.0f} GPU-hours")
    fp8 = j["fp8"]
    if fp8["enabled"]:
        layout.add_row("FP8", f"{fp8['recipe']['name']} {fp8['recipe']['format']}, {fp8['gemm_flops_share'] * 100:.0f} % of "
                              f"GEMM FLOPs, predicted speedup x{fp8.get('predicted_speedup', 1):.2f} over BF16")
    elif fp8.get("off_reason"):
        layout.add_row("FP8", fp8["off_reason"])
    search = j["search"]
    layout.add_row("search", f"{search.get('legal', p.evaluated + p.pruned):,} legal layouts: {p.evaluated:,} costed, "
                             f"{p.pruned:,} pruned ({search.get('pruned_over_memory', 0):,} over memory, "
                             f"{sum(search.get('pruned_dominated', {}).values()):,} dominated) in {p.plan_seconds:.2f} s")
    runtime = j.get("runtime") or {}
    if not p.feasible:
        layout.add_row("runtime", "[bold red]nothing to run[/]: no layout fits in memory (see above)")
    elif runtime:
        layout.add_row("runtime", _runtime_line(runtime))
    if j.get("kernel_costs"):
        layout.add_row("kernel costs", _kernel_costs_line(j["kernel_costs"]))
    con.print(layout)

    mem = Table(title=f"Memory per GPU (peak rank; usable {j['cluster']['usable_memory_gb']:.1f} GB after "
                      f"{j['cluster'].get('memory_headroom_gb', 0):.1f} GB headroom)")
    mem.add_column("part")
    mem.add_column(f"size ({UNIT_CONVENTION})", justify="right")
    mem.add_column("share", justify="right")
    total = pr["memory_gb"]["total"] or 1.0
    for k, v in pr["memory_gb"].items():
        if k != "total":
            mem.add_row(k, data_size(v * 1e9), f"{v / total * 100:.1f} %")
    mem.add_row("total", data_size(pr["memory_gb"]["total"] * 1e9), "")
    tim = Table(title="Step time (critical pipeline rank)")
    tim.add_column("part")
    tim.add_column("time", justify="right")
    tim.add_column("share", justify="right")
    for k, v in pr["time_s"].items():
        tim.add_row(k, duration(v), f"{v / pr['step_time_s'] * 100:.1f} %")
    tim.add_row("total", duration(pr["step_time_s"]), "")
    con.print(mem)
    con.print(tim)
    if len(pr["stages"]) > 1:
        st = Table(title="Pipeline ranks (one micro-batch)")
        for col in ("rank", "layers", "fwd", "bwd", "recompute", "memory"):
            st.add_column(col, justify="right")
        per_rank: dict[int, list[int]] = {}
        for c, chunk in enumerate(pl["stage_split"]):
            per_rank.setdefault(c % pl["pp"], []).extend(x for x in chunk if 0 <= x < m["layers"])
        for s, rc in zip(pr["stages"], pl["recompute_per_stage"]):
            st.add_row(str(s["rank"]), str(len(per_rank.get(s["rank"], []))), duration(s["fwd"]),
                       duration(s["bwd"]), rc, data_size(sum(s["memory"].values())))
        con.print(st)

    if p.alternatives:
        alt = Table(title="Alternatives (best of each other family)")
        for col in ("layout", "step time", "MFU", "peak memory"):
            alt.add_column(col)
        for a in j["alternatives"]:
            alt.add_row(a["summary"], duration(a["step_time_s"]), f"{a['mfu'] * 100:.1f} %",
                        data_size(a["peak_memory_gb"] * 1e9))
        con.print(alt)
    if p.rejected:
        rej = Table(title="Rejected families (closest first)")
        rej.add_column("family")
        rej.add_column("why")
        for r in p.rejected[:12]:
            rej.add_row(r["family"], r["reason"])
        if len(p.rejected) > 12:
            rej.add_row("...", f"{len(p.rejected) - 12} more in --json")
        con.print(rej)


def plan_text(p: Plan, width: int = 10_000) -> str:
    """The compile tables as plain text (for `vlac compile --report DIR`), never wrapped."""
    con = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    print_plan(con, p)
    return con.export_text()
