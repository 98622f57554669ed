"""``pareto.html``: the front chart as one self-contained HTML file (inline SVG, no scripts
or fonts fetched from anywhere), so it opens offline and as an MLflow artifact.

The same points as ``pareto.png`` (``slimtune.results.pareto.chart_points``). Hovering a marker
shows its trial, policy summary, accuracy, latency and size: through a small inline
script, and through SVG ``<title>`` tooltips where scripts are blocked (sandboxed viewers).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

from slimtune.results.pareto import ChartPoint

_W, _H = 820, 500
_L, _R, _T, _B = 70, 200, 40, 60  # margins; the legend sits in the right one
_COLOURS = {"feasible": "#7fa7cf", "front": "#d62728", "front_other": "#ff7f0e",
            "over_budget": "#b0b0b0", "failed": "#808080", "baseline": "#000000",
            "reference": "#2ca02c", "reference_ring": "#2ca02c"}
_LEGEND = {"front": "front: accuracy vs latency", "front_other": "front only through size",
           "feasible": "feasible, dominated", "over_budget": "over budget / infeasible",
           "failed": "failed", "baseline": "baseline", "reference": "reference policy"}
_SCRIPT = """(function(){var tip=document.getElementById('tip');
document.querySelectorAll('[data-info]').forEach(function(el){
el.addEventListener('mousemove',function(e){tip.textContent=el.getAttribute('data-info');
tip.style.display='block';tip.style.left=(e.pageX+12)+'px';tip.style.top=(e.pageY+12)+'px';});
el.addEventListener('mouseleave',function(){tip.style.display='none';});});})();"""
_CSS = """body{font-family:sans-serif;margin:16px;color:#222}svg{background:#fff}
#tip{position:absolute;display:none;white-space:pre;background:#fffbe6;border:1px solid #999;
padding:4px 6px;font-size:12px;pointer-events:none}table{border-collapse:collapse;margin-top:12px}
td,th{border:1px solid #ccc;padding:2px 7px;font-size:13px;text-align:right}
th{background:#f2f2f2}td.l{text-align:left}"""


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    import numpy as np

    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** np.floor(np.log10(raw))
    step = min((s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw), default=raw)
    first = np.ceil(lo / step) * step
    return [float(round(v, 10)) for v in np.arange(first, hi + step * 1e-6, step)]


def hover_text(p: ChartPoint) -> str:
    """What hovering a marker shows."""
    notes = ", ".join(n for n in (f"front rank {p.rank}" if p.rank else "",
                                  "best feasible" if p.best else "") if n)
    lines = [p.label if p.trial_id is None and p.kind != "reference" else
             f"trial {p.trial_id}" + (f" ({notes})" if notes else "") + f": {_LEGEND[p.kind]}"]
    if p.trial_id is not None and p.label != f"#{p.trial_id}":
        lines.append(p.label)
    if p.policy:
        lines.append(f"policy: {p.policy}")
    lines.append("accuracy: " + ("not measured" if p.accuracy is None else f"{p.accuracy:.4f}"))
    lines.append(f"latency: {p.latency_ms:.3f} ms")
    if p.size_bytes is not None:
        lines.append(f"size: {p.size_bytes / 1e3:.1f} kB")
    if p.run_id:
        lines.append(f"MLflow run: {p.run_id}")
    return "\n".join(lines)


def _marker(kind: str, x: float, y: float, info: str) -> str:
    c = _COLOURS[kind]
    attr = f'data-info="{html.escape(info)}"'
    title = f"<title>{html.escape(info)}</title>"
    if kind == "baseline":
        pts = " ".join(f"{x + dx:.1f},{y + dy:.1f}" for dx, dy in (
            (0, -9), (2.6, -3), (9, -3), (4, 1.5), (6, 8), (0, 4), (-6, 8), (-4, 1.5),
            (-9, -3), (-2.6, -3)))
        return f'<polygon points="{pts}" fill="{c}" {attr}>{title}</polygon>'
    if kind in ("reference", "reference_ring"):  # a ring: the reference is one of the trials
        fill, half = (c, 5) if kind == "reference" else ("none", 9)
        return (f'<rect x="{x - half:.1f}" y="{y - half:.1f}" width="{2 * half}" '
                f'height="{2 * half}" fill="{fill}" stroke="{_COLOURS["reference"]}" '
                f'stroke-width="2" {attr}>{title}</rect>')
    if kind == "front_other":
        pts = f"{x:.1f},{y - 6:.1f} {x + 6:.1f},{y:.1f} {x:.1f},{y + 6:.1f} {x - 6:.1f},{y:.1f}"
        return f'<polygon points="{pts}" fill="{c}" {attr}>{title}</polygon>'
    if kind in ("over_budget", "failed"):
        return (f'<g {attr} stroke="{c}" stroke-width="2"><line x1="{x - 4:.1f}" '
                f'y1="{y - 4:.1f}" x2="{x + 4:.1f}" y2="{y + 4:.1f}"/><line x1="{x - 4:.1f}" '
                f'y1="{y + 4:.1f}" x2="{x + 4:.1f}" y2="{y - 4:.1f}"/>'
                f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" '
                f'fill="transparent" stroke="none"/>{title}</g>')
    r = 5.5 if kind == "front" else 4.5
    return (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{c}" fill-opacity="0.85" '
            f'{attr}>{title}</circle>')


def chart_svg(points: Sequence[ChartPoint], *, budget_ms: float, title: str) -> str:
    """The chart as an SVG element: staircase, markers, budget line, axes, legend."""
    lats = [p.latency_ms for p in points] + [budget_ms]
    accs = [p.accuracy for p in points if p.accuracy is not None] or [0.0, 1.0]
    span = max(lats) - min(lats) or max(lats) or 1.0
    x_lo, x_hi = max(min(lats) - 0.06 * span, 0.0), max(lats) + 0.04 * span
    a_lo, a_hi = min(accs), max(accs)
    pad = max((a_hi - a_lo) * 0.08, 0.005)
    y_lo, y_hi = a_lo - pad * 2, min(a_hi + pad, 1.0 + pad)
    pw, ph = _W - _L - _R, _H - _T - _B

    def sx(v: float) -> float:
        return _L + (v - x_lo) / (x_hi - x_lo) * pw

    def sy(v: float) -> float:
        return _T + (y_hi - v) / (y_hi - y_lo) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
           f'viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="11">',
           f'<text x="{_L}" y="22" font-size="14">{html.escape(title)}</text>',
           f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>']
    for v in _ticks(x_lo, x_hi):
        out.append(f'<line x1="{sx(v):.1f}" y1="{_T}" x2="{sx(v):.1f}" y2="{_T + ph}" '
                   f'stroke="#eee"/><text x="{sx(v):.1f}" y="{_T + ph + 15}" '
                   f'text-anchor="middle">{v:g}</text>')
    for v in _ticks(y_lo, y_hi):
        out.append(f'<line x1="{_L}" y1="{sy(v):.1f}" x2="{_L + pw}" y2="{sy(v):.1f}" '
                   f'stroke="#eee"/><text x="{_L - 6}" y="{sy(v) + 4:.1f}" '
                   f'text-anchor="end">{v:.3g}</text>')
    out.append(f'<text x="{_L + pw / 2}" y="{_H - 18}" text-anchor="middle">measured median '
               'latency (ms)</text>')
    out.append(f'<text transform="translate(18,{_T + ph / 2}) rotate(-90)" '
               'text-anchor="middle">validation accuracy</text>')
    bx = sx(budget_ms)
    out.append(f'<line x1="{bx:.1f}" y1="{_T}" x2="{bx:.1f}" y2="{_T + ph}" stroke="#ff7f0e" '
               f'stroke-dasharray="6,4" stroke-width="1.5"><title>budget {budget_ms:.3f} ms'
               f'</title></line><text x="{bx + 4:.1f}" y="{_T + 12}" fill="#c05a00">budget '
               f'{budget_ms:.3g} ms</text>')
    stairs = sorted((p for p in points if p.kind == "front" and p.accuracy is not None),
                    key=lambda p: p.latency_ms)
    if stairs:
        path = [f"M{sx(stairs[0].latency_ms):.1f},{sy(stairs[0].accuracy):.1f}"]
        for i in range(len(stairs)):
            nxt = stairs[i + 1] if i + 1 < len(stairs) else None
            path.append(f"H{sx(nxt.latency_ms if nxt else budget_ms):.1f}")
            if nxt is not None:
                path.append(f"V{sy(nxt.accuracy):.1f}")
        out.append(f'<path d="{" ".join(path)}" fill="none" stroke="#d62728" '
                   'stroke-width="1.5"/>')
    order = ("over_budget", "failed", "feasible", "front_other", "front", "reference",
             "baseline")
    trials = {p.trial_id for p in points if p.kind not in ("baseline", "reference")}
    named = {p.trial_id for p in points if p.kind == "reference"}
    best_ids = {p.trial_id for p in points if p.best}  # a trial id, or none
    for kind in order:
        for p in points:
            if p.kind != kind:
                continue
            y = sy(p.accuracy) if p.accuracy is not None else _T + ph - 8
            shape = "reference_ring" if kind == "reference" and p.trial_id in trials else kind
            out.append(_marker(shape, sx(p.latency_ms), y, hover_text(p)))
            labelled = kind == "reference" or (kind in ("front", "front_other")
                                               and p.trial_id not in named)
            if labelled and p.accuracy is not None:
                best = p.best or p.trial_id in best_ids
                text = p.label + (" best" if best else "")
                out.append(f'<text x="{sx(p.latency_ms) + 10:.1f}" y="{y - 6:.1f}" '
                           f'font-size="10">{html.escape(text)}</text>')
    ly = _T + 6
    present = [k for k in _LEGEND if any(p.kind == k for p in points)]
    for kind in present:
        out.append(_marker(kind, _W - _R + 22, ly, _LEGEND[kind]))
        out.append(f'<text x="{_W - _R + 34}" y="{ly + 4}">{_LEGEND[kind]}</text>')
        ly += 20
    if any(p.accuracy is None for p in points):
        x = _W - _R + 14
        out.append(f'<text x="{x}" y="{ly + 4}" fill="#666">x along the bottom: stopped</text>'
                   f'<text x="{x}" y="{ly + 18}" fill="#666">before an accuracy</text>')
    out.append("</svg>")
    return "\n".join(out)


def front_html(points: Sequence[ChartPoint], *, budget_ms: float, title: str,
               table: Sequence[dict] = ()) -> str:
    """The whole page: the chart, then the front as a table."""
    rows = ""
    if table:
        keys = list(table[0])
        head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
        body = "".join("<tr>" + "".join(
            f'<td{" class=l" if isinstance(v, str) else ""}>{html.escape(_fmt(v))}</td>'
            for v in row.values()) + "</tr>" for row in table)
        rows = f"<h3>Pareto front</h3><table><tr>{head}</tr>{body}</table>"
    data = json.dumps([p.__dict__ for p in points])
    svg = chart_svg(points, budget_ms=budget_ms, title=title)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_CSS}</style></head><body>{svg}"
            f"<div id='tip'></div>{rows}<script type='application/json' id='points'>"
            f"{html.escape(data, quote=False)}</script><script>{_SCRIPT}</script></body></html>\n")


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return "" if v is None else str(v)
