"""Reports of a protocol run (:mod:`gapdiff_core.evaluation`): JSON, Markdown in the paper's layout, and one
self-contained HTML page (images embedded as base64 PNG, plots as inline SVG; no external files or scripts).

Directions as in the paper's tables: FDFR↑ ISM↓ BRISQUE↑ SER-FIQ↓ (the arrow points to stronger protection).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Optional

from ..io.atomic import write_text
from ..io import ImageError, load_image
from ..preprocess.real import JPEG_DEFAULT_QUALITY
from ..common.visualize import amplified_perturbation

METRICS = (("fdfr", "FDFR↑"), ("ism", "ISM↓"), ("brisque", "BRISQUE↑"), ("serfiq", "SER-FIQ↓"))
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
EMPTY_NOTES = {"ism": "undefined: no face in the reference photos"}
DEMO_BANNER = ("DEMO ON A TOY MODEL: the diffusion model is the tiny built-in random model and/or the generator is a "
               "demo generator trained for about a minute against it. These numbers and images show how the "
               "protocol runs; they say NOTHING about protection of real photos.")


# ---------------------------------------------------------------- aggregation
def _mean(values):
    vals = [v for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def aggregate(results: dict) -> list[dict]:
    """One row per (method, transform): metrics per prompt and their mean over identities and prompts, as the
    official scripts average (:func:`gapdiff_core.evaluation.combine_metrics`); the identity-learning gap averaged
    over identities; fidelity of the protected photos (and after the transform) vs the clean ones."""
    from . import combine_metrics

    groups: dict = {}
    for run in results["runs"]:
        groups.setdefault((run["method"], run["transform"]), []).append(run)
    rows = []
    for (method, transform), runs in groups.items():
        per_prompt = {p: combine_metrics([r["metrics"][p] for r in runs if p in r["metrics"]])
                      for p in results["prompts"]}
        learning = [r.get("identity_learning") or {} for r in runs]
        rows.append({
            "method": method, "transform": transform, "budget": runs[0]["budget"],
            "method_spec": runs[0]["method_spec"], "identities": [r["identity"] for r in runs],
            "per_prompt": per_prompt,
            "mean": combine_metrics([e for r in runs for e in r["metrics"].values()]),
            "identity_gap": _mean(x.get("gap") for x in learning),
            "identity_error": _mean(x.get("error") for x in learning),
            "psnr_db": _psnr(r["fidelity"] for r in runs),
            "ssim": _mean(r["fidelity"].get("ssim") for r in runs),
            "linf": max((r["fidelity"].get("linf_grey_levels") or 0.0) for r in runs),
            "psnr_after_transform_db": _psnr(r["fidelity_after_transform"] for r in runs),
        })
    return rows


def _psnr(fidelities) -> Optional[float]:
    """Mean PSNR; ∞ when every photo is unchanged (JSON stores that as null with L∞ 0)."""
    fs = list(fidelities)
    if fs and all(f.get("linf_grey_levels") == 0 and (f.get("psnr_db") is None or f.get("psnr_db") == math.inf)
                  for f in fs):
        return math.inf
    return _mean(f.get("psnr_db") for f in fs)


def no_face_note(rows: list[dict]) -> str:
    """Why ISM is undefined and SER-FIQ 0 when no generated image had a detectable face (else empty)."""
    if rows and all(v.get("fdfr") == 1.0 for r in rows for v in r["per_prompt"].values()):
        return ("No face was detected in any generated image (FDFR 1.000 everywhere), so ISM, SER-FIQ and the face "
                "quality count 0, as in the protocol, and their means over detected faces are undefined (–). "
                "Expected with the tiny random model: it cannot learn a face from a few photos in a few steps.")
    return ""


def jpeg_quality(spec: str) -> Optional[int]:
    """'jpeg:30' -> 30; bare 'jpeg' -> the quality it runs at (real.JPEG_DEFAULT_QUALITY); 'none' -> 100 (plotted
    at the right end, labelled 'none'); anything else -> None."""
    if spec == "none":
        return 100
    name, _, arg = spec.partition(":")
    if name == "jpeg":
        return int(arg) if arg else JPEG_DEFAULT_QUALITY
    return None


def _fmt_gap(v) -> str:
    """The identity-learning gap, signed, to 3 significant digits (its size varies by orders of magnitude)."""
    return _fmt(v) if v is None or not math.isfinite(v) else f"{v:+.3g}"


def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–" if v is None else ("∞" if v > 0 else "-∞")
    return f"{v:.{digits}f}"


# ---------------------------------------------------------------- JSON / Markdown
def json_report(results: dict) -> str:
    from . import jsonable as _jsonable

    return json.dumps(_jsonable(results), indent=2, ensure_ascii=False, allow_nan=False, default=str)


def markdown_report(results: dict) -> str:
    """The protocol that ran, then the paper's layout (rows method × transform, column groups per prompt: FDFR↑ ISM↓
    BRISQUE↑ SER-FIQ↓), then the summary over prompts with the detected-face means and the identity-learning gap."""
    rows = aggregate(results)
    prompts = results["prompts"]
    lines = [f"# {results.get('title', 'gapdiff evaluation')}" + (" — DEMO on a toy model" if results["is_demo"] else ""), ""]
    if results["is_demo"]:
        lines += [f"> **{DEMO_BANNER}**", ""]
    title, note, settings = protocol_summary(results)
    lines += [f"## {title}", "", note, ""]
    if settings:
        lines += ["| Setting | Protocol | This run | |", "|---|---|---|---|"]
        lines += [f"| {name} | {want} | {got} | {'✓' if ok else '✗ departs'} |" for name, want, got, ok in settings]
        lines.append("")
    lines += [f"- {k}: {v}" for k, v in run_facts(results)] + [""]
    lines += ["## Results per prompt", "",
              "Prompts: " + "; ".join(f"P{i + 1} = “{p}”" for i, p in enumerate(prompts)), "",
              "Arrows point to stronger protection. Values are averaged over identities"
              f" ({', '.join(sorted({r['identity'] for r in results['runs']}))}) as the official scripts do "
              "(ISM: an identity without a detected face counts 0).", ""]
    head = ["Method", "Transform"] + [f"P{i + 1} {name}" for i in range(len(prompts)) for _, name in METRICS] + \
           [f"mean {name}" for _, name in METRICS]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["transform"]]
        cells += [_fmt(r["per_prompt"][p][k]) for p in prompts for k, _ in METRICS]
        cells += [_fmt(r["mean"][k]) for k, _ in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    if no_face_note(rows):
        lines += ["", f"*{no_face_note(rows)}*"]
    lines += ["", "## Summary (mean over prompts and identities)", "", SUMMARY_NOTE, "",
              "| " + " | ".join(["Method", "Transform"] + [n for _, n in SUMMARY] + [GAP_NAME]) + " |",
              "|" + "---|" * (len(SUMMARY) + 3)]
    for r in rows:
        lines.append("| " + " | ".join([r["method"], r["transform"]] + [_fmt(r["mean"][k]) for k, _ in SUMMARY]
                                       + [_fmt_gap(r["identity_gap"])]) + " |")
    lines += ["", "## Visibility of the protection (protected vs clean photos)", "",
              "| Method | Transform | PSNR (dB) | SSIM | L∞ (grey levels) | PSNR after transform (dB) |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['transform']} | {_fmt(r['psnr_db'], 2)} | {_fmt(r['ssim'], 4)} | "
                     f"{_fmt(r['linf'], 1)} | {_fmt(r['psnr_after_transform_db'], 2)} |")
    lines += ["", "## Setup", ""] + [f"- {k}: {v}" for k, v in _setup_items(results)]
    lines += ["", "## Backends", ""] + [f"- {k}: {v}" for k, v in _backends(results).items()]
    lines += ["", "## Packages", "", ", ".join(f"{k} {v}" for k, v in
                                              results["environment"]["packages"].items() if v)]
    if results["is_demo"]:
        lines += ["", f"*{DEMO_BANNER}*"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- what ran
SUMMARY = (("fdfr", "FDFR↑"), ("ism", "ISM↓"), ("ism_detected", "ISM↓ (detected faces)"), ("brisque", "BRISQUE↑"),
           ("serfiq", "SER-FIQ↓"), ("serfiq_detected", "SER-FIQ↓ (detected faces)"),
           ("face_quality", "face quality↓"), ("face_quality_detected", "face quality↓ (detected faces)"))
GAP_NAME = "identity gap↑"
SUMMARY_NOTE = ("ISM, SER-FIQ and the face quality (the lower of the learned QualityFace score and the face's "
                "1 - BRISQUE/100) as in the protocol (an image or identity without a detected face counts 0), and "
                "over the detected faces only. Identity gap: the attacked model's "
                "denoising error on the identity's clean reference photos (set_C) minus that of the model attacked "
                "with the clean, untransformed photos; higher = the attacker learned less of the identity "
                "(none | none is 0 by construction).")
PROTOCOL_TITLES = {"paper": "the paper's (GAP-Diff, NDSS 2025: its evaluation scripts and released code)"}
SETTING_NAMES = {
    "attack_preset": "attack preset", "resolution": "resolution (px)", "prompts": "prompts",
    "images_per_prompt": "images per prompt", "generation_steps": "sampling steps", "guidance_scale": "CFG scale",
    "scheduler": "scheduler", "generation_batch_size": "sampling batch", "budgets": "budget (grey levels, 0–255)",
    "transforms": "transforms", "threshold": "face detection threshold", "serfiq_T": "SER-FIQ passes T",
    "attack.mode": "attack: fine-tuning", "attack.train_text_encoder": "attack: text encoder trained",
    "attack.learning_rate": "attack: learning rate", "attack.max_train_steps": "attack: steps",
    "attack.train_batch_size": "attack: batch", "attack.prior_loss_weight": "attack: prior-preservation weight",
    "attack.num_class_images": "attack: class images", "attack.mixed_precision": "attack: mixed precision"}


def _value(v) -> str:
    if isinstance(v, (list, tuple)):
        return "; ".join(f"“{x}”" if isinstance(x, str) and " " in x else (f"{x:g}" if isinstance(x, float) else str(x))
                         for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def protocol_summary(results: dict) -> tuple[str, str, list[tuple[str, str, str, bool]]]:
    """(title, one-line note, [(setting, protocol value, value that ran, matches)]) of the protocol that ran."""
    proto = results.get("protocol") or {"name": "custom", "settings": []}
    name, settings = proto["name"], proto.get("settings") or []
    if name == "custom" or not settings:
        return ("Protocol: custom settings",
                "Not a named protocol; `gapdiff evaluate --protocol paper` runs the paper's. What ran is under Setup.",
                [])
    rows = [(SETTING_NAMES.get(s["setting"], s["setting"]), _value(s["protocol"]), _value(s["ran"]), s["matches"])
            for s in settings]
    off = [r[0] for r in rows if not r[3]]
    note = (f"Protocol **{name}**: {PROTOCOL_TITLES.get(name, name)}. Every setting it fixes, and what this run used: "
            + (f"**{len(off)} setting(s) depart from it ({', '.join(off)}), so these are not the protocol's "
               "numbers.**" if off else "all match."))
    return f"Protocol: {name}" + (f" ({len(off)} departure(s))" if off else ""), note, rows


def run_facts(results: dict) -> list[tuple[str, str]]:
    """What every report states up front: the generator's protection function and the detector's floor."""
    from ..model.protector import NORM_DESCRIPTIONS

    c = results["config"]
    norm = "official" if c.get("official_mode") else c.get("norm", "image")
    seed = f", seed {c.get('seed')}" if norm == "official" else ""
    facts = [("protection function (generator methods)", f"{norm}: {NORM_DESCRIPTIONS.get(norm, norm)}{seed}")]
    det = results.get("reference_detection")
    if det and det.get("n_photos"):
        per = det.get("per_identity") or {}
        facts.append(("face detection on the clean reference photos (the detector's floor)",
                      f"{det['n_detected']}/{det['n_photos']} detected (rate {_fmt(det['rate'])}; FDFR of clean "
                      f"photos {_fmt(1 - det['rate'])})" + ("; " + ", ".join(
                          f"{k} {v['n_detected']}/{v['n_photos']}" for k, v in per.items()) if len(per) > 1 else "")))
    return facts


def _setup_items(results: dict) -> list[tuple[str, str]]:
    c, a, g = results["config"], results["attack_config"], results["generation_config"]
    t = results["timing"]
    base = next((r.get("base_model") for r in results["runs"] if r.get("base_model")), c["model"])
    return [("diffusion model", f"{base}" + (" (toy model, random weights)" if results["is_demo"] else "")),
            ("attack", f"preset {a.get('preset')} ({a['mode']}, {a['max_train_steps']} steps, lr {a['learning_rate']}, "
                       f"resolution {a.get('resolution') or 'model default'}, {a['num_class_images']} class images)"),
            ("generation", f"{g['images_per_prompt']} images per prompt, {g['steps']} {g['scheduler']} steps, "
                           f"guidance {g['guidance_scale']}, seed {g['seed']}"),
            ("budgets", ", ".join(f"{b:g}" for b in c["budgets"]) + " grey levels (0–255 scale)"),
            ("methods", ", ".join(c["methods"])), ("transforms", ", ".join(c["transforms"])),
            ("time", f"this run {t['total_seconds']:.1f} s; stages as computed (some maybe in earlier runs, "
                     "cached since): " + ", ".join(f"{k} {v:.1f} s" for k, v in
                                                   (t.get("stage_seconds") or t["computed_seconds"]).items())
             + f" = {sum((t.get('stage_seconds') or t['computed_seconds']).values()):.1f} s")]


def _backends(results: dict) -> dict:
    out = {}
    for r in results["runs"]:
        out.update(r.get("backends") or {})
        fid = r["fidelity"].get("backend")
        if fid:
            out["fidelity"] = fid
    return out


# ---------------------------------------------------------------- SVG plots
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
    ml, mr, mt, mb = 52, 12, 26, 58
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
    pad = (y1 - y0) * 0.1 or max(abs(y0) * 0.1, 0.05)
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
    for key, name in METRICS + (("face_quality", "face quality↓"), ("identity_gap", GAP_NAME),
                                ("psnr_after_transform_db", "PSNR vs clean (dB)")):
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
    for key, name in METRICS + (("psnr_db", "PSNR (dB)"),):
        series: dict = {}
        for r in brows:
            y = r[key] if key.startswith("psnr") else r["mean"][key]
            series.setdefault(f"{r['method_spec'].split('/')[-1]} | {r['transform']}", []).append((r["budget"], y))
        plots.append(svg_line_chart(series, f"{name} vs budget", "budget (grey levels)", name,
                                    empty_note=EMPTY_NOTES.get(key, "no data")))
    return plots


# ---------------------------------------------------------------- images
def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base_dir / p


def _load_rgb(path: Path):
    """Decoded as everywhere else (io.load_image: orientation, 16-bit, CMYK); raises ImageError."""
    from PIL import Image

    return Image.fromarray(load_image(path).rgb)


def _png_data_uri(im, max_side: int) -> str:
    from PIL import Image

    im = im.copy()
    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img_tag(im, caption: str, max_side: int = 150) -> str:
    return (f'<figure><img src="{_png_data_uri(im, max_side)}" alt="{html.escape(caption)}">'
            f'<figcaption>{html.escape(caption)}</figcaption></figure>')


def image_grids(results: dict, base_dir: Path, max_photos: int = 2, max_generated: int = 2) -> str:
    """Per identity and method: clean / protected / perturbation amplified / after each transform, then the
    images generated by the model attacked with them (first prompt), per transform."""
    from PIL import Image

    parts = []
    by_ident: dict = {}
    for r in results["runs"]:
        by_ident.setdefault(r["identity"], {}).setdefault(r["method"], []).append(r)
    for ident, methods in by_ident.items():
        parts.append(f"<h3>Identity: {html.escape(ident)}</h3>")
        for method, runs in methods.items():
            imgs = runs[0]["images"]
            parts.append(f"<h4>{html.escape(method)}</h4><div class='grid'>")
            for i, (c, p) in enumerate(zip(imgs["clean"][:max_photos], imgs["protected"][:max_photos])):
                try:
                    clean, prot = _load_rgb(_resolve(c, base_dir)), _load_rgb(_resolve(p, base_dir))
                except ImageError as e:
                    parts.append(f"<p>unreadable image: {html.escape(str(e))}</p>")
                    continue
                parts.append(_img_tag(clean, f"clean #{i + 1}"))
                parts.append(_img_tag(prot, f"protected #{i + 1}"))
                if clean.size == prot.size and runs[0]["budget"] is not None:
                    vis, gain = amplified_perturbation(clean, prot, runs[0]["budget"])
                    parts.append(_img_tag(Image.fromarray(vis), f"perturbation ×{gain:.0f}"))
                for r in runs:
                    if r["transform"] != "none":
                        t = _resolve(r["images"]["transformed"][i], base_dir)
                        if t.is_file():
                            parts.append(_img_tag(_load_rgb(t), f"after {r['transform']}"))
            parts.append("</div>")
            prompt = next(iter(runs[0]["images"]["generated"]), None)
            if prompt is None:
                continue
            parts.append(f"<p class='cap'>Generated by the model DreamBooth-attacked with the "
                         f"{html.escape(method)} photos, per transform — “{html.escape(prompt)}”:</p>"
                         "<div class='grid'>")
            for r in runs:
                for j, g in enumerate(r["images"]["generated"].get(prompt, [])[:max_generated]):
                    gp = _resolve(g, base_dir)
                    if gp.is_file():
                        parts.append(_img_tag(_load_rgb(gp), f"{r['transform']} #{j + 1}", 110))
            parts.append("</div>")
    return "\n".join(parts)


# ---------------------------------------------------------------- HTML
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
         "scripts do (ISM: an identity without a detected face counts 0).</p>"]
    ptitle, pnote, settings = protocol_summary(results)
    h.append(f"<h2>{e(ptitle)}</h2><p>{e(pnote).replace('**', '')}</p>")
    if settings:
        h.append("<table><tr><th class='l'>Setting</th><th class='l'>Protocol</th><th class='l'>This run</th><th></th>"
                 "</tr>" + "".join(f"<tr><td class='l'>{e(n)}</td><td class='l'>{e(w)}</td><td class='l'>{e(g)}</td>"
                                   f"<td>{'✓' if ok else '<b>✗ departs</b>'}</td></tr>" for n, w, g, ok in settings)
                 + "</table>")
    h.append("<ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in run_facts(results)) + "</ul>")
    h += ["<h2>Results per prompt</h2><div class='wide'><table><tr><th class='l' rowspan='2'>Method</th>"
          "<th class='l' rowspan='2'>Transform</th>"]
    for i, p in enumerate(prompts):
        h.append(f"<th colspan='4' title='{e(p)}'>P{i + 1}</th>")
    h.append("<th colspan='4'>mean</th></tr><tr>" + "".join(f"<th>{e(n)}</th>" for _, n in METRICS) *
             (len(prompts) + 1) + "</tr>")
    for r in rows:
        h.append(f"<tr><td class='l'>{e(r['method'])}</td><td class='l'>{e(r['transform'])}</td>" +
                 "".join(f"<td>{_fmt(r['per_prompt'][p][k])}</td>" for p in prompts for k, _ in METRICS) +
                 "".join(f"<td><b>{_fmt(r['mean'][k])}</b></td>" for k, _ in METRICS) + "</tr>")
    h.append("</table></div><p class='cap'>" + "; ".join(f"P{i + 1} = “{e(p)}”" for i, p in enumerate(prompts))
             + "</p>" + (f"<p class='cap'><b>{e(no_face_note(rows))}</b></p>" if no_face_note(rows) else "")
             + "<h2>Summary (mean over prompts and identities)</h2><table><tr><th class='l'>Method</th>"
             "<th class='l'>Transform</th>" + "".join(f"<th>{e(n)}</th>" for _, n in SUMMARY) + f"<th>{GAP_NAME}</th>"
             "</tr>" + "".join(f"<tr><td class='l'>{e(r['method'])}</td><td class='l'>{e(r['transform'])}</td>"
                               + "".join(f"<td>{_fmt(r['mean'][k])}</td>" for k, _ in SUMMARY)
                               + f"<td><b>{_fmt_gap(r['identity_gap'])}</b></td></tr>" for r in rows)
             + f"</table><p class='cap'>{e(SUMMARY_NOTE)}</p>"
             + "<h2>Visibility of the protection</h2><table><tr><th class='l'>Method</th>"
             "<th class='l'>Transform</th><th>PSNR (dB)</th><th>SSIM</th><th>L∞ (grey levels)</th>"
             "<th>PSNR after transform (dB)</th></tr>")
    for r in rows:
        h.append(f"<tr><td class='l'>{e(r['method'])}</td><td class='l'>{e(r['transform'])}</td>"
                 f"<td>{_fmt(r['psnr_db'], 2)}</td><td>{_fmt(r['ssim'], 4)}</td><td>{_fmt(r['linf'], 1)}</td>"
                 f"<td>{_fmt(r['psnr_after_transform_db'], 2)}</td></tr>")
    h.append("</table>")
    rob, bud = robustness_plots(rows), budget_plots(rows)
    if rob:
        h.append("<h2>Robustness to JPEG (mean over prompts)</h2>" + banner.replace("class='demo'", "class='demo' "
                 "style='font-size:12px'") + f"<div class='plots'>{''.join(rob)}</div>")
    if bud:
        h.append(f"<h2>Metrics vs budget</h2><div class='plots'>{''.join(bud)}</div>")
    h.append("<h2>Images</h2>" + image_grids(results, base_dir))
    h.append("<h2>Setup</h2><ul>" + "".join(f"<li><b>{e(k)}</b>: {e(str(v))}</li>" for k, v in _setup_items(results))
             + "</ul><h2>Backends</h2><ul>" + "".join(f"<li><b>{e(k)}</b>: {e(str(v))}</li>"
                                                       for k, v in _backends(results).items()) + "</ul>")
    env = results["environment"]
    h.append("<h2>Environment</h2><p><code>" + e(f"Python {env['python']} on {env['platform']}; " + ", ".join(
        f"{k} {v}" for k, v in env["packages"].items() if v)) + "</code></p>")
    h.append(banner + "</body></html>")
    return "\n".join(h)


def write_reports(results: dict, out_dir: str | Path, base_dir: str | Path | None = None,
                  stem: str = "report") -> dict:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.html`` into ``out_dir``; image paths in ``results``
    are relative to ``base_dir`` (default ``out_dir``). Returns the three paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "html": out_dir / f"{stem}.html"}
    texts = {"json": json_report(results), "md": markdown_report(results),
             "html": html_report(results, Path(base_dir) if base_dir else out_dir)}
    for k, p in paths.items():
        write_text(p, texts[k])
    return paths
