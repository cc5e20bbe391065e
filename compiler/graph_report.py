"""A readable picture of a lowered graph: one self-contained HTML page (inline SVG and CSS, no
scripts, no network) plus the same drawings as standalone SVG files.

- a summary of the model and of the conventions behind the figures;
- the per-layer table (runs of identical layers folded into one row);
- every layer as a row of bars: forward+backward FLOPs split by node kind with the FP8-eligible
  share, and saved-activation bytes under each recompute policy;
- each distinct block drawn once as its data-flow graph, one box per node that computes or
  keeps something (FLOPs, saved bytes, FP8 eligibility), views and cheap elementwise ops folded
  into the edges.

Every figure is read from the Graph; the output is byte-identical for the same graph.
"""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path

import torch.fx as fx

from .graph import KINDS, RECOMPUTE, Graph, LayerCost, NodeCost
from .number_format import data_size, si

KIND_COLOURS = {
    "gemm": "#4e79a7", "attention": "#f28e2b", "router": "#b07aa1", "norm": "#59a14f", "elementwise": "#bab0ac",
    "embedding": "#edc948", "loss": "#e15759", "input": "#76b7b2", "other": "#d3d3d3",
}
POLICY_COLOURS = {"none": "#e15759", "selective": "#f28e2b", "full": "#59a14f"}
FP8_COLOUR = "#2ca02c"
BOX_W, BOX_H, GAP_X, GAP_Y = 260, 48, 24, 30


def write_graph_report(graph: Graph, out_dir: str | Path) -> list[Path]:
    """Write graph.html, graph-layers.svg and graph-block-<signature>.svg into `out_dir`;
    returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers_svg = layers_picture(graph)
    blocks = {label: block_picture(graph, label) for label in sorted(graph.blocks)}
    written = []
    page = out / "graph.html"
    page.write_text(_page(graph, layers_svg, blocks), encoding="utf-8")
    written.append(page)
    path = out / "graph-layers.svg"
    path.write_text(_standalone(layers_svg), encoding="utf-8")
    written.append(path)
    for label, svg in blocks.items():
        path = out / f"graph-block-{_file_safe(label)}.svg"
        path.write_text(_standalone(svg), encoding="utf-8")
        written.append(path)
    return written


# ---- number formatting -----------------------------------------------------------------------

def _bytes(x: float) -> str:
    return data_size(x)  # decimal units, as the terminal tables (number_format.UNIT_CONVENTION)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _file_safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in label)


def _standalone(svg: str) -> str:
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1) + "\n"


# ---- the per-layer overview ------------------------------------------------------------------

def layers_picture(g: Graph) -> str:
    rows = g.layers()
    label_w, bar_w, value_w, row_h, top = 150, 300, 80, 18, 52
    flops_max = max((lc.flops_fwd + lc.flops_bwd + lc.flops_overcompute for lc in rows), default=0.0) or 1.0
    saved_max = max((lc.saved["none"] for lc in rows), default=0.0) or 1.0
    x_flops, x_saved = label_w, label_w + bar_w + value_w + 20
    width = x_saved + bar_w + value_w
    height = top + row_h * len(rows) + 56
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<text x="{x_flops}" y="14" font-weight="bold">FLOPs per micro-batch, forward + backward</text>',
             f'<text x="{x_flops}" y="28" fill="#555">by node kind; hatched: capacity over-compute;</text>',
             f'<text x="{x_flops}" y="41" fill="#555">green line: FP8-eligible share</text>',
             f'<text x="{x_saved}" y="14" font-weight="bold">bytes saved for backward</text>',
             f'<text x="{x_saved}" y="28" fill="#555">per recompute policy: none, selective, full</text>',
             '<defs><pattern id="hatch" width="4" height="4" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
             '<rect width="4" height="4" fill="#fff"/><line x1="0" y1="0" x2="0" y2="4" stroke="#999" stroke-width="2"/>'
             '</pattern></defs>']
    for i, lc in enumerate(rows):
        y = top + i * row_h
        parts.append(f'<text x="4" y="{y + 12}">{_e(lc.label)}</text>')
        x = x_flops
        for kind in KINDS:
            f = lc.flops_by_kind.get(kind, 0.0)
            if f <= 0:
                continue
            w = f / flops_max * bar_w
            parts.append(f'<rect x="{x:.2f}" y="{y + 2}" width="{w:.2f}" height="{row_h - 6}" fill="{KIND_COLOURS[kind]}">'
                         f'<title>{_e(lc.label)}: {kind} {si(f, "FLOP")}</title></rect>')
            x += w
        if lc.flops_overcompute > 0:
            w = lc.flops_overcompute / flops_max * bar_w
            parts.append(f'<rect x="{x:.2f}" y="{y + 2}" width="{w:.2f}" height="{row_h - 6}" fill="url(#hatch)" '
                         f'stroke="#999" stroke-width="0.5"><title>{_e(lc.label)}: capacity over-compute '
                         f'{si(lc.flops_overcompute, "FLOP")}</title></rect>')
            x += w
        if lc.flops_fp8 > 0:
            w = lc.flops_fp8 / flops_max * bar_w
            parts.append(f'<rect x="{x_flops}" y="{y + row_h - 3}" width="{w:.2f}" height="2" fill="{FP8_COLOUR}">'
                         f'<title>{_e(lc.label)}: FP8-eligible {lc.fp8_share * 100:.0f} %</title></rect>')
        total = lc.flops_fwd + lc.flops_bwd
        if total:
            parts.append(f'<text x="{x + 4:.2f}" y="{y + 12}" fill="#555">{si(total, "FLOP")}</text>')
        for j, policy in enumerate(RECOMPUTE):
            w = lc.saved[policy] / saved_max * bar_w
            parts.append(f'<rect x="{x_saved}" y="{y + 2 + j * 4}" width="{w:.2f}" height="4" fill="{POLICY_COLOURS[policy]}">'
                         f'<title>{_e(lc.label)}: {policy} {_bytes(lc.saved[policy])}</title></rect>')
        if lc.saved["none"]:
            w = lc.saved["none"] / saved_max * bar_w
            parts.append(f'<text x="{x_saved + w + 4:.2f}" y="{y + 12}" fill="#555">{_bytes(lc.saved["none"])}</text>')
    y = top + row_h * len(rows) + 14
    legend = [(KIND_COLOURS[k], k) for k in KINDS if any(lc.flops_by_kind.get(k) for lc in rows)]
    legend += [(POLICY_COLOURS[p], f"saved ({p})") for p in RECOMPUTE] + [(FP8_COLOUR, "FP8-eligible")]
    x = 4
    for colour, text in legend:
        if x + 20 + 7 * len(text) > width:
            x, y = 4, y + 18
        parts.append(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{colour}"/><text x="{x + 13}" y="{y + 9}">{_e(text)}</text>')
        x += 13 + 7 * len(text) + 14
    parts.append("</svg>")
    return "\n".join(parts)


# ---- one block's data-flow graph ---------------------------------------------------------------

def _block_records(g: Graph, label: str) -> tuple[str, dict[str, NodeCost]]:
    """The records of a middle call of block `label` (first and last decoder layers may differ
    in FP8 policy), keyed by the block's FX node names."""
    paths = g.block_paths.get(label) or []
    if not paths:
        return "", {}
    path = paths[len(paths) // 2]
    prefix = path + "."
    return path, {n.name[len(prefix):]: n for n in g.nodes if n.name.startswith(prefix)}


def _drawn(n: fx.Node, rec: NodeCost | None, saved_floor: float) -> bool:
    if n.op == "output":
        return True
    if rec is None:  # None arguments, asserts, size queries
        return False
    if n.op == "placeholder":
        return True
    if rec.kind in ("gemm", "attention", "router", "norm", "loss", "embedding") or rec.flops_fwd:
        return True
    return rec.saved["none"] >= saved_floor and rec.saved["none"] > 0


def block_picture(g: Graph, label: str) -> str:
    gm = g.blocks[label]
    path, records = _block_records(g, label)
    total_saved = sum(r.saved["none"] for r in records.values())
    floor = 0.02 * total_saved
    nodes = list(gm.graph.nodes)
    drawn = [n for n in nodes if _drawn(n, records.get(n.name), floor)]
    drawn_set = set(drawn)
    # edges between drawn nodes, through the folded ones
    reach: dict[fx.Node, set[fx.Node]] = {}
    for n in nodes:
        sources: set[fx.Node] = set()
        for a in n.all_input_nodes:
            sources |= {a} if a in drawn_set else reach.get(a, set())
        reach[n] = sources
    rank: dict[fx.Node, int] = {}
    for n in drawn:
        rank[n] = 1 + max((rank[a] for a in reach[n]), default=-1)
    by_rank: dict[int, list[fx.Node]] = defaultdict(list)
    for n in drawn:
        by_rank[rank[n]].append(n)
    columns = max((len(v) for v in by_rank.values()), default=1)
    width = columns * (BOX_W + GAP_X) + GAP_X + 40  # room for the skip-connection arcs
    height = (max(by_rank, default=0) + 1) * (BOX_H + GAP_Y) + GAP_Y + 30
    pos: dict[fx.Node, tuple[float, float]] = {}
    for r, row in by_rank.items():
        offset = (width - len(row) * (BOX_W + GAP_X) + GAP_X) / 2
        for i, n in enumerate(row):
            pos[n] = (offset + i * (BOX_W + GAP_X), 30 + r * (BOX_H + GAP_Y))
    title = f"block {label}" + (f" (as at {path}; {len(g.block_paths.get(label, []))} calls)" if path else "") \
        + "; green border: FP8-eligible GEMM; hover a box for details"
    parts = [f'<svg width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
             f'font-family="sans-serif" font-size="11">',
             f'<text x="{GAP_X}" y="18" font-weight="bold">{_e(title)}</text>']
    lane = 0
    for n in drawn:
        x2, y2 = pos[n]
        for a in sorted(reach[n], key=nodes.index):
            x1, y1 = pos[a]
            if rank[n] - rank[a] == 1:  # neighbouring ranks: a curve from bottom to top
                sx, sy, ex, ey = x1 + BOX_W / 2, y1 + BOX_H, x2 + BOX_W / 2, y2
                mid = (sy + ey) / 2
                d = f"M{sx:.1f},{sy:.1f} C{sx:.1f},{mid:.1f} {ex:.1f},{mid:.1f} {ex:.1f},{ey:.1f}"
            else:  # a skip connection (residual, mask): an arc on the right, past the boxes between
                lane += 1
                side = max(x1, x2) + BOX_W + 8 + 6 * (lane % 4)
                sy, ey = y1 + BOX_H / 2, y2 + BOX_H / 2
                d = (f"M{x1 + BOX_W:.1f},{sy:.1f} C{side:.1f},{sy:.1f} {side:.1f},{ey:.1f} "
                     f"{x2 + BOX_W:.1f},{ey:.1f}")
            parts.append(f'<path d="{d}" fill="none" stroke="#888" stroke-width="1"/>')
    for n in drawn:
        parts.append(_box(n, records.get(n.name), *pos[n]))
    parts.append("</svg>")
    return "\n".join(parts)


def _box(n: fx.Node, rec: NodeCost | None, x: float, y: float) -> str:
    kind = rec.kind if rec else "other"
    name = rec.module.rsplit(".", 1)[-1] if rec is not None and n.op == "call_module" else n.name
    summary = [kind]
    detail = [f"{n.name} ({kind})"]
    if rec is not None:
        if rec.module:
            detail.append(f"module: {rec.module}")
        total = rec.flops_fwd + rec.flops_bwd
        if total:
            summary.append(si(total, "FLOP"))
            detail.append(f"FLOPs fwd {si(rec.flops_fwd)}, bwd {si(rec.flops_bwd)}"
                          + (f", capacity over-compute {si(rec.flops_overcompute)}" if rec.flops_overcompute else "")
                          + (" (causal)" if rec.causal else "")
                          + (f" (sliding window, chunks or sinks: {rec.score_fraction:.1%} of the scores)"
                             if rec.kind == "attention" and not rec.causal and rec.score_fraction < 1 else ""))
        if kind in ("gemm", "norm") and rec.in_block and not (rec.tp_split or rec.sp_split):  # MLA's down path
            detail.append("tensor parallelism: whole on every rank, on the whole sequence under sp")
        if kind == "input":
            summary.append(f"kept {_bytes(rec.saved['full'])}")
        elif rec.saved["none"]:
            summary.append(f"saves {_bytes(rec.saved['none'])}")
        detail.append("saved: " + ", ".join(f"{p} {_bytes(rec.saved[p])}" for p in RECOMPUTE))
        if rec.gemm_mnk:
            detail.append("M, N, K = " + ", ".join(str(d) for d in rec.gemm_mnk))
        if rec.fp8_reason:
            detail.append(("FP8: " if rec.fp8_eligible else "BF16: ") + rec.fp8_reason)
        split = [s for s, on in (("TP (FLOPs)", rec.tp_split), ("TP (saved bytes)", rec.act_tp_sharded),
                                 ("SP", rec.sp_split), ("EP (weights)", rec.expert)) if on]
        if split:
            detail.append("divides by: " + ", ".join(split))
    colour = KIND_COLOURS.get(kind, KIND_COLOURS["other"])
    stroke = f'stroke="{FP8_COLOUR}" stroke-width="3"' if rec is not None and rec.fp8_eligible else 'stroke="#555" stroke-width="1"'
    short = name if len(name) <= 32 else name[:31] + "…"
    return (f'<g><title>{_e(chr(10).join(detail))}</title>'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{colour}" fill-opacity="0.35" {stroke}/>'
            f'<text x="{x + 8:.1f}" y="{y + 18:.1f}" font-weight="bold">{_e(short)}</text>'
            f'<text x="{x + 8:.1f}" y="{y + 36:.1f}">{_e(" · ".join(summary))}</text></g>')


# ---- the page --------------------------------------------------------------------------------

def _layer_runs(g: Graph) -> list[list[LayerCost]]:
    """Consecutive decoder layers with identical figures folded into one run."""
    runs: list[tuple[list[LayerCost], tuple | None]] = []
    for lc in g.layers():
        decoder = 0 <= lc.layer < g.n_layers
        key = (g.block_of_layer[lc.layer], lc.params, lc.flops_fwd, lc.flops_bwd, lc.flops_fp8,
               tuple(lc.saved.values())) if decoder else None
        if key is not None and runs and runs[-1][1] == key:
            runs[-1][0].append(lc)
        else:
            runs.append(([lc], key))
    return [members for members, _ in runs]


def _table(g: Graph) -> str:
    head = ("layers", "params", "FLOPs fwd+bwd", "over-compute", "recompute (full)",
            "saved none", "saved selective", "saved full", "FP8 share")
    out = ["<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"]
    for members in _layer_runs(g):
        lc = members[0]
        if len(members) > 1:
            name = f"layers {lc.layer}–{members[-1].layer} ({g.block_of_layer[lc.layer]}), each of {len(members)}"
        else:
            name = lc.label
        total = lc.flops_fwd + lc.flops_bwd
        cells = (name, si(lc.params), si(total, "FLOP"), si(lc.flops_overcompute, "FLOP"),
                 si(lc.flops_recompute["full"], "FLOP"), _bytes(lc.saved["none"]), _bytes(lc.saved["selective"]),
                 _bytes(lc.saved["full"]), f"{lc.fp8_share * 100:.0f} %" if total else "-")
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _summary(g: Graph) -> str:
    counts = defaultdict(int)
    for sig in g.block_of_layer:
        counts[sig] += 1
    rows = [
        ("micro-batch", f"{g.micro_batch} x {g.seq_len} tokens, {g.dtype_bytes}-byte activations"),
        ("parameters", f"{si(g.params_total)} total, {si(g.params_expert)} in experts, {si(g.params_active)} active per token"),
        ("FLOPs per token", f"{si(g.flops_per_token, 'FLOP')} (forward + backward, useful work)"),
        ("capacity over-compute", si(g.flops_overcompute, "FLOP") + " per micro-batch"),
        ("decoder layers", ", ".join(f"{n} x {sig}" for sig, n in sorted(counts.items())) or "none"),
        ("analysed blocks", ", ".join(f"{sig} ({len(g.block_paths.get(sig, []))} calls)" for sig in sorted(g.blocks))),
    ] + [(f"saved for backward ({p})", _bytes(g.saved_bytes(p)) + " per micro-batch") for p in RECOMPUTE]
    return "<table class=summary>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


_CSS = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 20px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}
th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
table.summary th{text-align:left}
.picture{overflow-x:auto;border:1px solid #ddd;padding:6px;margin-bottom:20px}
p.note{font-size:13px;max-width:1000px}
"""

_NOTES = """
<p class=note>FLOPs count GEMMs and attention for one micro-batch: causal attention as half the dense
product, a sliding-window or chunked layer as the (query, key) pairs inside its window or chunks (attention sinks: one
more pair per query), the fused attention backward as 2.5x its forward, MoE experts for the tokens routed to
them (capacity padding separately, as over-compute). Saved bytes are what autograd keeps between
forward and backward. Recompute policies act on blocks: <b>selective</b> keeps the outputs of GEMMs,
attention and the router (norms and elementwise ops are recomputed), <b>full</b> keeps only each block's
input. FP8 share: fraction of a layer's FLOPs in FP8-eligible GEMMs. Hover a box or bar for details.</p>
"""


def _page(g: Graph, layers_svg: str, blocks: dict[str, str]) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{_e(g.experiment_name)}: lowered graph</title><style>{_CSS}</style></head><body>",
             f"<h1>{_e(g.experiment_name)}: lowered graph</h1>", _summary(g), _NOTES,
             "<h2>Per layer</h2>", _table(g),
             "<h2>Layers</h2>", f'<div class="picture">{layers_svg}</div>']
    for label, svg in blocks.items():
        parts += [f"<h2>Block {_e(label)}</h2>", f'<div class="picture">{svg}</div>']
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


__all__ = ["block_picture", "layers_picture", "write_graph_report"]
