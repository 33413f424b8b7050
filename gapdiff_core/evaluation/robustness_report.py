"""The robustness matrix as a console table, a JSON file with every number, and a self-contained HTML report: the
matrix as an SVG heat map (colour = effect retained, the 95% interval in each cell), the verdicts in words, example
images per transform (clean and protected after the transform, and their amplified difference), and the settings.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from ..io import atomic
from .robustness_matrix import TOY, VERDICTS, Interval, RobustnessMatrix

EXPLAINED = (
    ("effect retained", "how much worse the surrogate diffusion model denoises the protected photo than the clean "
                        "one after the transform (its mean denoising error, protected minus clean); above 0 means "
                        "the protection still disturbs what an attacker's fine-tuning learns, 0 means it is gone"),
    ("share", "the effect retained as a share of the effect without any transform (100% = nothing lost)"),
    ("over noise", "the effect retained minus that of random ±budget noise on the same photo and transform: a "
                   "protection is only worth its name where this is clearly above 0"),
    ("PSNR", "how far the transformed protected photo is from the transformed clean one, in dB (higher = the "
             "remaining perturbation is less visible; 'identical' = no difference left)"),
    ("[a, b]", "the 95% confidence interval over photos (percentile bootstrap)"),
)


def number_text(x: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(x) else ("identical" if math.isinf(x) else f"{x:.{digits}g}")


def interval_text(iv: Interval, digits: int = 3) -> str:
    if math.isnan(iv.mean) or math.isinf(iv.mean) or iv.low == iv.high:
        return number_text(iv.mean, digits)
    return f"{iv.mean:.{digits}g} [{iv.low:.{digits}g}, {iv.high:.{digits}g}]"


def _share(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.0%}"


def percent_text(iv: Interval) -> str:
    if math.isnan(iv.mean) or iv.low == iv.high:
        return _share(iv.mean)
    return f"{iv.mean:.0%} [{iv.low:.0%}, {iv.high:.0%}]"


def banners(matrix: RobustnessMatrix) -> list[str]:
    """The demo labels a reader must see first."""
    out = []
    if matrix.toy:
        out.append(f"DEMO on a toy model: the surrogate is the tiny built-in model with random weights, so these numbers "
                   f"show how the tool works and say nothing about real protection; verdicts read {TOY}.")
    if any(m.demo for m in matrix.methods):
        out.append("DEMO generator: trained against a toy model, it protects nothing real.")
    return out


def matrix_table(matrix: RobustnessMatrix) -> str:
    """The matrix as plain text, one block per transform, one line per method."""
    head = ("method", "effect retained", "share", "over noise", "PSNR dB", "verdict")
    lines = banners(matrix)
    for spec in matrix.transforms:
        rows = [head]
        for m in matrix.methods:
            c = matrix.cell(m.name, spec)
            rows.append((m.name, interval_text(c.effect), percent_text(c.share), interval_text(c.over_control),
                         number_text(c.psnr.mean, 3), matrix.verdict_text(c)))
        widths = [max(len(r[k]) for r in rows) for k in range(len(head) - 1)]
        lines.append(f"\n== {spec}" + (" (untransformed reference)" if spec == matrix.transforms[0] else ""))
        lines += ["  ".join(v.ljust(w) for v, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    lines.append(f"\n{len(matrix.photos)} photo(s) measured" +
                 (f"; {len(matrix.skipped)} skipped" if matrix.skipped else ""))
    return "\n".join(lines)


def _finite(value):
    """JSON has no inf/nan: such numbers become null (PSNR of identical photos, a share without an effect)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def matrix_json(matrix: RobustnessMatrix) -> dict:
    """Every number: settings, photos (measured and skipped with the reason), each cell's intervals and verdict,
    and the per-photo denoising errors and PSNRs the cells come from. Infinite or undefined values are null."""
    def iv(x: Interval) -> dict:
        return {"mean": x.mean, "low": x.low, "high": x.high}
    cells = [{"method": c.method, "transform": c.transform, "effect": iv(c.effect), "share": iv(c.share),
              "over_control": iv(c.over_control), "psnr": iv(c.psnr), "verdict": c.verdict,
              "verdict_text": matrix.verdict_text(c)} for c in matrix.cells.values()]
    return _finite({
        "toy_model": matrix.toy, "labels": banners(matrix), "settings": matrix.settings,
        "methods": [{"name": m.name, "role": m.role, "demo": m.demo} for m in matrix.methods],
        "transforms": matrix.transforms, "photos": matrix.photos, "skipped": matrix.skipped,
        "explained": dict(EXPLAINED), "verdicts": VERDICTS, "cells": cells,
        "per_photo": {"denoising_error": matrix.errors, "psnr": matrix.psnr}})


def _colour(value: float, scale: float) -> tuple[str, str]:
    """The cell's fill and its text colour: white at 0, red for a positive effect, blue for a negative one, full at
    ``scale``; white text on the darkest fills so the numbers stay readable."""
    if not math.isfinite(value) or scale <= 0:
        return "#eeeeee", "black"
    v = max(-1.0, min(1.0, value / scale))
    fade = round(255 * (1 - abs(v)))
    fill = f"rgb(255,{fade},{fade})" if v >= 0 else f"rgb({fade},{fade},255)"
    return fill, "white" if abs(v) > 0.6 else "black"


def heat_map_svg(matrix: RobustnessMatrix, cell_w: int = 170, cell_h: int = 62) -> str:
    """Methods × transforms; colour = effect retained (relative to the largest in the matrix), each cell giving the
    mean, its 95% interval and the share retained."""
    scale = max((abs(c.effect.mean) for c in matrix.cells.values() if math.isfinite(c.effect.mean)), default=0.0)
    left, top = 140, 40
    w, h = left + cell_w * len(matrix.transforms), top + cell_h * len(matrix.methods)
    out = [f'<svg class="heatmap" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="12">']
    for j, spec in enumerate(matrix.transforms):
        out.append(f'<text x="{left + j * cell_w + cell_w / 2}" y="{top - 10}" text-anchor="middle" '
                   f'font-weight="bold">{html.escape(spec)}</text>')
    for i, m in enumerate(matrix.methods):
        y = top + i * cell_h
        out.append(f'<text x="{left - 8}" y="{y + cell_h / 2 + 4}" text-anchor="end" '
                   f'font-weight="bold">{html.escape(m.name)}</text>')
        for j, spec in enumerate(matrix.transforms):
            c, x = matrix.cell(m.name, spec), left + j * cell_w
            fill, ink = _colour(c.effect.mean, scale)
            out.append(f'<rect x="{x}" y="{y}" width="{cell_w}" height="{cell_h}" fill="{fill}" stroke="#888">'
                       f'<title>{html.escape(matrix.verdict_text(c))}</title></rect>')
            interval = f"[{number_text(c.effect.low, 3)}, {number_text(c.effect.high, 3)}]"
            for k, text in enumerate((number_text(c.effect.mean, 3), interval, f"share {_share(c.share.mean)}")):
                out.append(f'<text x="{x + cell_w / 2}" y="{y + 18 + 16 * k}" text-anchor="middle" fill="{ink}">'
                           f'{html.escape(text)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _png(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _table_html(matrix: RobustnessMatrix) -> str:
    rows = ["<tr><th>transform</th><th>method</th><th>effect retained</th><th>share</th><th>over noise</th>"
            "<th>PSNR dB</th><th>verdict</th></tr>"]
    for spec in matrix.transforms:
        for m in matrix.methods:
            c = matrix.cell(m.name, spec)
            cols = (spec, m.name, interval_text(c.effect), percent_text(c.share), interval_text(c.over_control),
                    number_text(c.psnr.mean, 3), matrix.verdict_text(c))
            rows.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in cols) + "</tr>")
    return "<table>" + "\n".join(rows) + "</table>"


def _examples_html(matrix: RobustnessMatrix) -> str:
    if not matrix.examples:
        return "<p>No examples (no protection method, or no photo measured).</p>"
    parts = []
    for e in sorted(matrix.examples, key=lambda e: matrix.transforms.index(e.transform)):  # grouped by transform
        figs = "".join(f'<figure><img alt="{alt}" src="{_png(img)}"><figcaption>{alt}</figcaption></figure>'
                       for alt, img in (("clean", e.clean), ("protected", e.protected),
                                        ("difference, amplified", e.difference)))
        parts.append(f'<div class="example"><h3>{html.escape(e.transform)} — {html.escape(Path(e.photo).name)}'
                     f"</h3>{figs}</div>")
    return "\n".join(parts)


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}"
         ".demo{background:#fff3cd;border:1px solid #d39e00;padding:.6em;font-weight:bold}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
         "figure{display:inline-block;margin:0 8px 8px 0}figcaption{font-size:12px;text-align:center}"
         "img{image-rendering:pixelated}")


def robustness_html(matrix: RobustnessMatrix) -> str:
    """The self-contained HTML report (images inline, no external files or scripts)."""
    demo = "".join(f'<p class="demo">{html.escape(b)}</p>' for b in banners(matrix))
    explained = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in EXPLAINED)
    verdicts = "".join(f"<li>{html.escape(v)}</li>" for v in VERDICTS.values())
    settings = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in matrix.settings.items())
    skipped = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in matrix.skipped.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>gapdiff robustness matrix</title><style>{STYLE}</style></head>
<body><h1>Does the protection survive?</h1>{demo}
<p>{len(matrix.photos)} photo(s); each protection against each transform (what a platform or an attacker does to
the photo before fine-tuning). Colour = effect retained: red = the protection still works, white = nothing left,
blue = the protected photo is easier to learn than the clean one.</p>
<h2>Matrix</h2>{heat_map_svg(matrix)}
<h2>What the numbers mean</h2><ul>{explained}</ul>
<p>Verdicts, computed from the intervals:</p><ul>{verdicts}</ul>
<h2>Every cell</h2>{_table_html(matrix)}
<h2>Examples</h2>{_examples_html(matrix)}
<h2>Settings</h2><table>{settings}</table>
{f"<h2>Skipped photos</h2><ul>{skipped}</ul>" if skipped else ""}
</body></html>
"""


def write_robustness_report(matrix: RobustnessMatrix, out_dir: str | Path) -> dict[str, Path]:
    """``OUT/robustness.html`` and ``OUT/robustness.json`` (each written atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {"html": atomic.write_text(out / "robustness.html", robustness_html(matrix)),
            "json": atomic.write_text(out / "robustness.json",
                                      json.dumps(matrix_json(matrix), indent=1, allow_nan=False) + "\n")}
