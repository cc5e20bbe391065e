"""Pictures of a plan as dependency-free SVG: the pipeline schedule as a timeline (one row per
pipeline rank, simulated pass by pass) and the memory of one GPU per pipeline rank as stacked
bars against the usable and total memory. Same plan -> byte-identical files. Sizes in decimal
units (GB = 1e9 bytes, number_format.UNIT_CONVENTION)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from .number_format import data_size
from .plan import Estimate, Plan
from .schedule_sim import makespan, simulate

MAX_DRAWN_PASSES = 6000  # beyond this the timeline shows fewer micro-batches (said in the caption)
PASS_COLOURS = {"F": "#4C78A8", "B": "#54A24B", "W": "#F58518"}
MEMORY_COLOURS = {"weights": "#4C78A8", "gradients": "#72B7B2", "optimizer": "#54A24B", "fp8_cache": "#B279A2",
                  "activations": "#F58518", "working": "#E45756", "comm_buffers": "#9D755D"}
FONT = 'font-family="DejaVu Sans, Arial, sans-serif"'


def _svg(width: int, height: int, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" {FONT} font-size="12">\n'
            f'<rect width="{width}" height="{height}" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")


def _text(x: float, y: float, s: str, size: int = 12, anchor: str = "start", weight: str = "normal") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}">{escape(s)}</text>')


def pipeline_svg(est: Estimate, title: str = "") -> str:
    """The schedule of one training step's micro-batches on the pipeline ranks."""
    lay = est.layout
    pp, v, m = lay.pp, lay.virtual_stages, lay.num_microbatches
    passes_per_micro = (3 if lay.schedule == "zero_bubble" else 2) * v * pp
    shown = m
    if m * passes_per_micro > MAX_DRAWN_PASSES:
        shown = max(pp, (MAX_DRAWN_PASSES // passes_per_micro) // pp * pp)
    stages = est.stages or ({"fwd": est.step_time_s / m / 3, "bwd": 2 * est.step_time_s / m / 3, "wgrad": 0.0},)
    fwd = [s["fwd"] for s in stages]
    bwd = [s["bwd"] for s in stages]
    wgrad = [s["wgrad"] for s in stages]
    # without pipelining the micro-batches simply run one after another on every GPU; simulate()
    # still needs a schedule name, but the picture must not claim one
    schedule = lay.schedule if pp > 1 else "1f1b"
    label = f"{schedule}, pp {pp}, {v} chunk(s) per rank" if pp > 1 else "no pipelining (pp 1): micro-batches in sequence"
    ops = simulate(schedule, pp, v, shown, fwd, bwd, wgrad)
    span = makespan(ops)
    busy = sum(op.end - op.start for op in ops)
    bubble = 1 - busy / (span * pp) if span else 0.0
    left, top, row, width = 70, 56, 26, 1100
    plot_w = width - left - 20
    height = top + row * pp + 60
    scale = plot_w / span if span else 1.0
    body = [_text(left, 20, title or f"Pipeline schedule: {lay.short()}", 14, weight="bold"),
            _text(left, 38, f"{label}, {shown} of {m} micro-batches shown; "
                            f"simulated span {span * 1e3:.1f} ms, idle {bubble * 100:.1f} % of rank time")]
    for r in range(pp):
        y = top + r * row
        body.append(_text(left - 8, y + row * 0.65, f"rank {r}", 11, anchor="end"))
        body.append(f'<rect x="{left}" y="{y + 2}" width="{plot_w:.1f}" height="{row - 4}" fill="#f2f2f2"/>')
    for op in sorted(ops, key=lambda o: (o.rank, o.start, o.kind)):
        x = left + op.start * scale
        w = max(0.5, (op.end - op.start) * scale)
        y = top + op.rank * row + 2
        shade = 1.0 - 0.35 * (op.chunk / max(1, v - 1)) if v > 1 else 1.0
        body.append(f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{row - 4}" fill="{PASS_COLOURS[op.kind]}" '
                    f'fill-opacity="{shade:.2f}" stroke="white" stroke-width="0.3"/>')
        if w > 14:
            body.append(_text(x + w / 2, y + row * 0.55, str(op.micro), 9, anchor="middle"))
    y = top + row * pp + 22
    for k, (kind, name) in enumerate((("F", "forward"), ("B", "backward" + (" (input grad)" if schedule == "zero_bubble" else "")),
                                      ("W", "weight grad (deferred)"))):
        if kind == "W" and schedule != "zero_bubble":
            continue
        x = left + k * 200
        body.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{PASS_COLOURS[kind]}"/>')
        body.append(_text(x + 18, y, name))
    body.append(_text(left, y + 22, f"time -> (0 .. {span * 1e3:.1f} ms); darker = later model chunk; "
                                    f"labels are micro-batch indices"))
    return _svg(width, height, body)


def memory_svg(est: Estimate, usable: float, capacity: float, title: str = "") -> str:
    """One stacked bar per pipeline rank (every GPU of a rank holds the same)."""
    stages = est.stages or ({"memory": {k: v for k, v in est.memory.items() if k != "total"}},)
    parts = list(MEMORY_COLOURS)
    n = len(stages)
    left, top, plot_h = 70, 50, 320
    bar_w = max(12, min(60, 900 // max(1, n) - 8))
    width = max(640, left + n * (bar_w + 8) + 220)
    height = top + plot_h + 60
    top_gb = max(capacity, max(sum(s["memory"].values()) for s in stages)) / 1e9 * 1.05
    y_of = lambda gb: top + plot_h - gb / top_gb * plot_h  # noqa: E731
    body = [_text(left, 20, title or f"Memory per GPU: {est.layout.short()}", 14, weight="bold"),
            _text(left, 38, f"peak {data_size(est.peak_memory)}; usable {data_size(usable)} of {data_size(capacity)}")]
    for gb in range(0, int(top_gb) + 1, max(10, int(top_gb) // 8 // 10 * 10 or 10)):
        y = y_of(gb)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + n * (bar_w + 8)}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        body.append(_text(left - 6, y + 4, f"{gb} GB", 10, anchor="end"))
    for r, s in enumerate(stages):
        x = left + r * (bar_w + 8) + 4
        acc = 0.0
        for part in parts:
            gb = s["memory"].get(part, 0.0) / 1e9
            if gb <= 0:
                continue
            y1, y0 = y_of(acc + gb), y_of(acc)
            body.append(f'<rect x="{x}" y="{y1:.2f}" width="{bar_w}" height="{y0 - y1:.2f}" fill="{MEMORY_COLOURS[part]}">'
                        f'<title>rank {r} {part}: {gb:.2f} GB</title></rect>')
            acc += gb
        body.append(_text(x + bar_w / 2, top + plot_h + 14, f"r{r}", 10, anchor="middle"))
    right = left + n * (bar_w + 8)
    for value, label, dash in ((usable, "usable", "6,3"), (capacity, "capacity", "")):
        y = y_of(value / 1e9)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#333" stroke-width="1.2"'
                    + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        body.append(_text(right + 4, y + 4, f"{label} {value / 1e9:.1f} GB", 10))
    lx = right + 110
    for k, part in enumerate(parts):
        y = top + 10 + k * 18
        body.append(f'<rect x="{lx}" y="{y - 10}" width="12" height="12" fill="{MEMORY_COLOURS[part]}"/>')
        body.append(_text(lx + 18, y, part.replace("_", " ")))
    body.append(_text(left, top + plot_h + 34, "pipeline rank (one bar per stage; all GPUs of a stage hold the same)"))
    return _svg(width, height, body)


def write_plan_pictures(plan: Plan, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    est = plan.chosen
    usable = plan.cluster["usable_memory_gb"] * 1e9
    capacity = usable + plan.cluster.get("memory_headroom_gb", 0.0) * 1e9
    titles = ("", "")
    if not plan.feasible:  # every view of an infeasible plan says so, the pictures too
        titles = tuple(f"{kind} {est.layout.short()} (INFEASIBLE: no layout fits in memory; closest shown)"
                       for kind in ("Pipeline schedule:", "Memory per GPU:"))
    files = {"pipeline.svg": pipeline_svg(est, titles[0]), "memory.svg": memory_svg(est, usable, capacity, titles[1])}
    paths = []
    for name, text in files.items():
        path = out / name
        path.write_text(text)
        paths.append(path)
    return paths
