"""A Pareto-front scatter plot as a self-contained SVG (no plotting library): every ok candidate,
the rejected ones hollow, the front joined by a line, the best ringed; hovering a point shows its
fields and values."""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape

from vlac.compiler.number_format import si as format_si

WIDTH, HEIGHT = 760, 500
LEFT, RIGHT, TOP, BOTTOM = 84, 28, 60, 64
COLORS = {"ok": "#7f8fa6", "rejected": "#c0c0c0", "front": "#e1701a", "best": "#c0392b"}


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    kind: str  # ok | rejected
    label: str  # tooltip text


def si(x: float) -> str:
    """Compact figures for axis ticks and labels: three significant digits, no space ("12.5k")."""
    return format_si(x, scaled=".3g", small=".3g", sep="")


class _Scale:
    """Data -> pixel along one axis; logarithmic when the values span more than 20x."""

    def __init__(self, values: list[float], lo_px: float, hi_px: float):
        lo, hi = min(values), max(values)
        self.log = lo > 0 and hi / lo > 20
        if self.log:
            lo, hi = math.log10(lo), math.log10(hi)
        pad = (hi - lo) * 0.06 or (abs(hi) * 0.1 or 1.0)
        self.lo, self.hi = lo - pad, hi + pad
        self.lo_px, self.hi_px = lo_px, hi_px

    def __call__(self, v: float) -> float:
        t = math.log10(v) if self.log else v
        return self.lo_px + (t - self.lo) / (self.hi - self.lo) * (self.hi_px - self.lo_px)

    def ticks(self) -> list[float]:
        if self.log:
            decades = range(math.ceil(self.lo), math.floor(self.hi) + 1)
            mults = (1, 2, 5) if len(decades) < 3 else (1,)
            return [m * 10.0 ** d for d in range(math.floor(self.lo), math.ceil(self.hi) + 1) for m in mults
                    if self.lo <= math.log10(m * 10.0 ** d) <= self.hi]
        raw = (self.hi - self.lo) / 5
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
        first = math.ceil(self.lo / step)
        return [k * step for k in range(first, math.floor(self.hi / step) + 1)]


def pareto_svg(points: list[Point], front: list[Point], best: Point | None, x_label: str, y_label: str,
               title: str) -> str:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{WIDTH / 2:.1f}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{escape(title)}</text>']
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    if not points:
        out.append(f'<text x="{WIDTH / 2:.1f}" y="{HEIGHT / 2:.1f}" text-anchor="middle">no candidate has plan '
                   f'figures to plot</text></svg>')
        return "\n".join(out) + "\n"
    sx = _Scale([p.x for p in points], x0, x1)
    sy = _Scale([p.y for p in points], y0, y1)
    out.append(f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="none" stroke="#333"/>')
    for t in sx.ticks():
        px = sx(t)
        out.append(f'<line x1="{px:.1f}" y1="{y1}" x2="{px:.1f}" y2="{y0}" stroke="#eee"/>'
                   f'<text x="{px:.1f}" y="{y0 + 16}" text-anchor="middle">{si(t)}</text>')
    for t in sy.ticks():
        py = sy(t)
        out.append(f'<line x1="{x0}" y1="{py:.1f}" x2="{x1}" y2="{py:.1f}" stroke="#eee"/>'
                   f'<text x="{x0 - 6}" y="{py + 4:.1f}" text-anchor="end">{si(t)}</text>')
    out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{HEIGHT - 20}" text-anchor="middle">'
               f'{escape(x_label)}{" (log scale)" if sx.log else ""}</text>')
    out.append(f'<text transform="translate(18 {(y0 + y1) / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f'{escape(y_label)}{" (log scale)" if sy.log else ""}</text>')
    on_front = {(p.x, p.y) for p in front}
    for p in points:
        if (p.x, p.y) in on_front:
            continue
        fill = COLORS["ok"] if p.kind == "ok" else "none"
        out.append(f'<circle cx="{sx(p.x):.1f}" cy="{sy(p.y):.1f}" r="4" fill="{fill}" stroke="{COLORS[p.kind]}" '
                   f'stroke-width="1.2"><title>{escape(p.label)}</title></circle>')
    if front:
        path = " ".join(f"{sx(p.x):.1f},{sy(p.y):.1f}" for p in front)
        out.append(f'<polyline points="{path}" fill="none" stroke="{COLORS["front"]}" stroke-width="1.5"/>')
        for p in front:
            out.append(f'<circle cx="{sx(p.x):.1f}" cy="{sy(p.y):.1f}" r="5" fill="{COLORS["front"]}">'
                       f'<title>{escape(p.label)}</title></circle>')
    if best is not None:
        bx, by = sx(best.x), sy(best.y)
        out.append(f'<circle cx="{bx:.1f}" cy="{by:.1f}" r="9" fill="none" stroke="{COLORS["best"]}" stroke-width="2">'
                   f'<title>{escape(best.label)}</title></circle>')
        anchor = "end" if bx > (x0 + x1) / 2 else "start"
        dx = -12 if anchor == "end" else 12
        out.append(f'<text x="{bx + dx:.1f}" y="{by - 10:.1f}" text-anchor="{anchor}" fill="{COLORS["best"]}" '
                   f'font-weight="bold">best</text>')
    legend = [("ok", COLORS["ok"], COLORS["ok"]), ("rejected by a constraint", "none", COLORS["rejected"]),
              ("Pareto front", COLORS["front"], COLORS["front"]), ("best (objective)", "none", COLORS["best"])]
    lx = x0
    for text, fill, stroke in legend:  # one row between the title and the plot
        out.append(f'<circle cx="{lx + 5}" cy="42" r="4" fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>'
                   f'<text x="{lx + 14}" y="46">{escape(text)}</text>')
        lx += 24 + 7 * len(text)
    out.append("</svg>")
    return "\n".join(out) + "\n"


__all__ = ["Point", "pareto_svg", "si"]
