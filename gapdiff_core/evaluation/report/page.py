"""The HTML report: one self-contained page (images embedded as base64 PNG, plots as inline SVG; no external files
or scripts)."""
from __future__ import annotations

import html
from pathlib import Path

from ...metrics.directions import format_value
from .charts import budget_plots, robustness_plots
from .facts import DEMO_BANNER, MARKS, backends, protocol_summary, run_facts, setup_items
from .images import image_grids
from .rows import (GAIN_HEADING, PAIRED_NOTE, PROTOCOL_COLUMNS, SUMMARY_COLUMNS, SUMMARY_NOTE, aggregate,
                   format_difference, format_interval, gain_text, no_face_note)

CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1240px;color:#222}
.demo{background:#fff3cd;border:2px solid #e0a800;padding:10px 14px;font-weight:bold;margin:12px 0}
table{border-collapse:collapse;font-size:11px;margin:8px 0}th,td{border:1px solid #bbb;padding:2px 4px;text-align:right}
th{background:#eee;text-align:center}td.l,th.l{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;text-align:center}figure img{display:block;border:1px solid #ccc;image-rendering:auto}
figcaption{font-size:11px;color:#555}.plots{display:flex;flex-wrap:wrap;gap:12px}.cap{font-size:13px;margin:6px 0 2px}
code{font-size:12px}.wide{overflow-x:auto}"""


def html_report(results: dict, base_dir: str | Path) -> str:
    """One self-contained page: tables, plots (inline SVG) and image grids (base64 PNG)."""
    base_dir = Path(base_dir)
    rows = aggregate(results)
    prompts = results["prompts"]
    demo = results["is_demo"]
    title = results.get("title", "gapdiff evaluation") + (" — DEMO on a toy model" if demo else "")
    e = html.escape
    banner = f"<div class='demo'>{e(DEMO_BANNER)}</div>" if demo else ""
    h = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
         f"<style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>", banner,
         "<p>Anti-DreamBooth protocol: protect set_B → transform → DreamBooth attack → generate → metrics against "
         "the clean set_C. Arrows point to stronger protection; values are averaged over identities as the official "
         "scripts do (ISM: an identity without a detected face counts 0); [lo, hi] is the bootstrap 95% interval over "
         "identities and images.</p>"]
    ptitle, pnote, settings = protocol_summary(results)
    h.append(f"<h2>{e(ptitle)}</h2><p>{e(pnote).replace('**', '')}</p>")
    if settings:
        h.append("<table><tr><th class='l'>Setting</th><th class='l'>Protocol</th><th class='l'>This run</th><th></th>"
                 "</tr>" + "".join(f"<tr><td class='l'>{e(n)}</td><td class='l'>{e(w)}</td><td class='l'>{e(g)}</td>"
                                   f"<td>{MARKS[ok] if ok is not False else '<b>' + MARKS[ok] + '</b>'}</td></tr>"
                                   for n, w, g, ok in settings)
                 + "</table>")
    h.append("<ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in run_facts(results)) + "</ul>")
    h += ["<h2>Results per prompt</h2><div class='wide'><table><tr><th class='l' rowspan='2'>Method</th>"
          "<th class='l' rowspan='2'>Transform</th>"]
    for i, p in enumerate(prompts):
        h.append(f"<th colspan='4' title='{e(p)}'>P{i + 1}</th>")
    h.append("<th colspan='4'>mean</th></tr><tr>" + "".join(f"<th>{e(n)}</th>" for _, n in PROTOCOL_COLUMNS) *
             (len(prompts) + 1) + "</tr>")
    for r in rows:
        h.append(f"<tr><td class='l'>{e(r['method'])}</td><td class='l'>{e(r['transform'])}</td>" +
                 "".join(f"<td>{format_interval(r['per_prompt_interval'][p][k])}</td>"
                         for p in prompts for k, _ in PROTOCOL_COLUMNS) +
                 "".join(f"<td><b>{format_interval(r['interval'][k])}</b></td>" for k, _ in PROTOCOL_COLUMNS)
                 + "</tr>")
    h.append("</table></div><p class='cap'>" + "; ".join(f"P{i + 1} = “{e(p)}”" for i, p in enumerate(prompts))
             + "</p>" + (f"<p class='cap'><b>{e(no_face_note(rows))}</b></p>" if no_face_note(rows) else "")
             + "<h2>Summary (mean over prompts and identities)</h2><table><tr><th class='l'>Method</th>"
             "<th class='l'>Transform</th>" + "".join(f"<th>{e(n)}</th>" for _, n in SUMMARY_COLUMNS)
             + f"<th>{GAIN_HEADING}</th>"
             "</tr>" + "".join(f"<tr><td class='l'>{e(r['method'])}</td><td class='l'>{e(r['transform'])}</td>"
                               + "".join(f"<td>{format_interval(r['interval'][k], k)}</td>" for k, _ in SUMMARY_COLUMNS)
                               + f"<td><b>{e(gain_text(r, results))}</b></td></tr>" for r in rows)
             + f"</table><p class='cap'>{e(SUMMARY_NOTE)}</p>" + _paired_table(rows)
             + "<h2>Visibility of the protection</h2><table><tr><th class='l'>Method</th>"
             "<th class='l'>Transform</th><th>PSNR (dB)</th><th>SSIM</th><th>L∞ (grey levels)</th>"
             "<th>PSNR after transform (dB)</th></tr>")
    for r in rows:
        h.append(f"<tr><td class='l'>{e(r['method'])}</td><td class='l'>{e(r['transform'])}</td>"
                 f"<td>{format_value(r['psnr_db'], 2)}</td><td>{format_value(r['ssim'], 4)}</td>"
                 f"<td>{format_value(r['linf'], 1)}</td>"
                 f"<td>{format_value(r['psnr_after_transform_db'], 2)}</td></tr>")
    h.append("</table>")
    rob, bud = robustness_plots(rows), budget_plots(rows)
    if rob:
        h.append("<h2>Robustness to JPEG (mean over prompts)</h2>" + banner.replace("class='demo'", "class='demo' "
                 "style='font-size:12px'") + f"<div class='plots'>{''.join(rob)}</div>")
    if bud:
        h.append(f"<h2>Metrics vs budget</h2><div class='plots'>{''.join(bud)}</div>")
    h.append("<h2>Images</h2>" + image_grids(results, base_dir))
    h.append("<h2>Setup</h2><ul>" + "".join(f"<li><b>{e(k)}</b>: {e(str(v))}</li>" for k, v in setup_items(results))
             + "</ul><h2>Backends</h2><ul>" + "".join(f"<li><b>{e(k)}</b>: {e(str(v))}</li>"
                                                       for k, v in backends(results).items()) + "</ul>")
    env = results["environment"]
    h.append("<h2>Environment</h2><p><code>" + e(f"Python {env['python']} on {env['platform']}; " + ", ".join(
        f"{k} {v}" for k, v in env["packages"].items() if v)) + "</code></p>")
    h.append(banner + "</body></html>")
    return "\n".join(h)


def _paired_table(rows: list[dict]) -> str:
    """Each method minus `none` at the same transform, with intervals (empty without such rows)."""
    paired = [r for r in rows if r["vs_none"] is not None]
    if not paired:
        return ""
    e = html.escape
    return ("<h2>Paired differences against none (same transform)</h2><table><tr><th class='l'>Method</th>"
            "<th class='l'>Transform</th>" + "".join(f"<th>Δ {e(n)}</th>" for _, n in SUMMARY_COLUMNS) + "</tr>"
            + "".join(f"<tr><td class='l'>{e(r['method'])}</td><td class='l'>{e(r['transform'])}</td>"
                      + "".join(f"<td>{e(format_difference(r['vs_none'][k], k))}</td>" for k, _ in SUMMARY_COLUMNS)
                      + "</tr>" for r in paired) + f"</table><p class='cap'>{e(PAIRED_NOTE)}</p>")
