"""Inline SVG line charts of a report: the metrics against JPEG quality (the paper's figure) and against the budget."""
from __future__ import annotations

import html
import math
from typing import Optional

from ...metrics.directions import METRICS
from ...preprocess import parse
from ...preprocess.codecs import SUBSAMPLING_PARAM
from .rows import GAIN_HEADING, PROTOCOL_COLUMNS

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
EMPTY_NOTES = {"ism": "undefined: no face in the reference photos", "identity_gain": "n/a (toy model)"}


def jpeg_quality(spec: str) -> Optional[int]:
    """The JPEG quality a transform spec runs at, when it is a JPEG round trip alone at the default chroma
    subsampling ('jpeg:30' -> 30; a bare 'jpeg' -> the registry's default quality); 'none' -> 100 (plotted at the
    right end, labelled 'none'); anything else (another transform, a chain, other subsampling) -> None."""
    t = parse(spec)
    if t.name == "none":
        return 100
    if t.name == "jpeg" and t.params["subsampling"] == SUBSAMPLING_PARAM.default:
        return t.params["quality"]
    return None


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def svg_line_chart(series: dict, title: str, xlabel: str, ylabel: str, *, width: int = 360, height: int = 240,
                   xtick_labels: Optional[dict] = None, empty_note: str = "no data") -> str:
    """An inline SVG line chart: ``series`` maps a label to [(x, y), ...] (points with y None are skipped)."""
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and math.isfinite(y)]
    ml, mr, mt, mb = 52, 12, 26, 58 + 13 * max(0, (len(series) + 1) // 2 - 2)  # room for every legend row
    pw, ph = width - ml - mr, height - mt - mb
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<text x="{width / 2}" y="16" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>']
    if not pts:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">{html.escape(empty_note)}</text></svg>')
        return "".join(out)
    xs = sorted({x for x, _ in pts})
    x0, x1 = (xs[0] - 1, xs[0] + 1) if len(xs) == 1 else (xs[0], xs[-1])
    y0, y1 = min(y for _, y in pts), max(y for _, y in pts)
    flat = y1 - y0 <= 1e-9 * max(1.0, abs(y1))  # equal up to rounding noise: a range around the value
    pad = max(abs(y0) * 0.1, 0.05) if flat else (y1 - y0) * 0.1
    y0, y1 = y0 - pad, y1 + pad

    def px(x):
        return ml + (x - x0) / (x1 - x0) * pw

    def py(y):
        return mt + (1 - (y - y0) / (y1 - y0)) * ph

    out.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#888"/>')
    ticks = _ticks(y0, y1)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step)) + (1 if step / 10 ** math.floor(math.log10(step)) == 2.5 else 0))
    for t in ticks:
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#ddd"/>'
                   f'<text x="{ml - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{t:.{decimals}f}</text>')
    for x in xs:
        label = (xtick_labels or {}).get(x, f"{x:g}")
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" stroke="#888"/>'
                   f'<text x="{px(x):.1f}" y="{mt + ph + 15}" text-anchor="middle">{html.escape(label)}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{mt + ph + 30}" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append(f'<text x="12" y="{mt + ph / 2}" text-anchor="middle" transform="rotate(-90 12 {mt + ph / 2})">'
               f'{html.escape(ylabel)}</text>')
    for i, (label, s) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        good = sorted((x, y) for x, y in s if y is not None and math.isfinite(y))
        if len(good) > 1:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in good)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{color}"/>' for x, y in good]
        lx = ml + (i % 2) * (pw / 2)
        ly = mt + ph + 44 + (i // 2) * 13
        out.append(f'<rect x="{lx:.1f}" y="{ly - 8:.1f}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{lx + 14:.1f}" y="{ly + 1:.1f}">{html.escape(label[:34])}</text>')
    out.append("</svg>")
    return "".join(out)


def robustness_plots(rows: list[dict]) -> list[str]:
    """Each metric (mean over prompts) and PSNR vs JPEG quality, one line per method (the paper's figure)."""
    jrows = [r for r in rows if jpeg_quality(r["transform"]) is not None]
    if len({jpeg_quality(r["transform"]) for r in jrows}) < 2:
        return []
    labels = {100: "none"} if any(r["transform"] == "none" for r in jrows) else {}
    plots = []
    extra = (("qualityface", METRICS["qualityface"].heading), ("face_brisque", METRICS["face_brisque"].heading),
             ("identity_gain", GAIN_HEADING),
             ("psnr_after_transform_db", "PSNR vs clean (dB)"))
    for key, name in PROTOCOL_COLUMNS + extra:
        series: dict = {}
        for r in jrows:
            y = r[key] if key in r else r["mean"][key]
            series.setdefault(r["method"], []).append((jpeg_quality(r["transform"]), y))
        plots.append(svg_line_chart(series, f"{name} vs JPEG quality", "JPEG quality", name, xtick_labels=labels,
                                    empty_note=EMPTY_NOTES.get(key, "no data")))
    return plots


def budget_plots(rows: list[dict]) -> list[str]:
    """Each metric vs budget, one line per method × transform (only when several budgets were run)."""
    brows = [r for r in rows if r["budget"] is not None]
    if len({r["budget"] for r in brows}) < 2:
        return []
    plots = []
    for key, name in PROTOCOL_COLUMNS + (("psnr_db", "PSNR (dB)"),):
        series: dict = {}
        for r in brows:
            y = r[key] if key.startswith("psnr") else r["mean"][key]
            series.setdefault(f"{r['method_spec'].split('/')[-1]} | {r['transform']}", []).append((r["budget"], y))
        plots.append(svg_line_chart(series, f"{name} vs budget", "budget (grey levels)", name,
                                    empty_note=EMPTY_NOTES.get(key, "no data")))
    return plots
