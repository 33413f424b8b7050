"""The Markdown report: the protocol that ran, then the tables in the paper's layout, the summary and the
visibility of the protection."""
from __future__ import annotations

from ...metrics.directions import format_value
from .facts import DEMO_BANNER, MARKS, backends, protocol_summary, run_facts, setup_items
from .rows import (GAIN_HEADING, PAIRED_NOTE, PROTOCOL_COLUMNS, SUMMARY_COLUMNS, SUMMARY_NOTE, aggregate,
                   format_difference, format_interval, gain_text, no_face_note)


def table_cell(value) -> str:
    """Text of a table cell, a chain's '|' escaped so that it does not split the cell."""
    return str(value).replace("|", "\\|")


def _cells(r: dict) -> list[str]:
    """A row's method and transform as table cells."""
    return [table_cell(r["method"]), table_cell(r["transform"])]


def markdown_report(results: dict) -> str:
    """The protocol that ran, then the paper's layout (rows method × transform, column groups per prompt: FDFR↑ ISM↓
    BRISQUE↑ SER-FIQ↓), then the summary over prompts with the detected-face means and the identity gain, then the
    paired differences against `none`; every metric with its bootstrap 95% interval."""
    rows = aggregate(results)
    prompts = results["prompts"]
    lines = [f"# {results.get('title', 'gapdiff evaluation')}"
             + (" — DEMO on a toy model" if results["is_demo"] else ""), ""]
    if results["is_demo"]:
        lines += [f"> **{DEMO_BANNER}**", ""]
    title, note, settings = protocol_summary(results)
    lines += [f"## {title}", "", note, ""]
    if settings:
        lines += ["| Setting | Protocol | This run | |", "|---|---|---|---|"]
        lines += [f"| {name} | {table_cell(want)} | {table_cell(got)} | {MARKS[ok]} |"
                  for name, want, got, ok in settings]
        lines.append("")
    lines += [f"- {k}: {v}" for k, v in run_facts(results)] + [""]
    lines += ["## Results per prompt", "",
              "Prompts: " + "; ".join(f"P{i + 1} = “{p}”" for i, p in enumerate(prompts)), "",
              "Arrows point to stronger protection. Values are averaged over identities"
              f" ({', '.join(sorted({r['identity'] for r in results['runs']}))}) as the official scripts do "
              "(ISM: an identity without a detected face counts 0); [lo, hi] is the bootstrap 95% interval over "
              "identities and images.", ""]
    head = (["Method", "Transform"] + [f"P{i + 1} {name}" for i in range(len(prompts)) for _, name in PROTOCOL_COLUMNS]
            + [f"mean {name}" for _, name in PROTOCOL_COLUMNS])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = _cells(r)
        cells += [format_interval(r["per_prompt_interval"][p][k]) for p in prompts for k, _ in PROTOCOL_COLUMNS]
        cells += [format_interval(r["interval"][k]) for k, _ in PROTOCOL_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    if no_face_note(rows):
        lines += ["", f"*{no_face_note(rows)}*"]
    lines += ["", "## Summary (mean over prompts and identities)", "", SUMMARY_NOTE, "",
              "| " + " | ".join(["Method", "Transform"] + [n for _, n in SUMMARY_COLUMNS] + [GAIN_HEADING]) + " |",
              "|" + "---|" * (len(SUMMARY_COLUMNS) + 3)]
    for r in rows:
        cells = _cells(r) + [format_interval(r["interval"][k], k) for k, _ in SUMMARY_COLUMNS]
        lines.append("| " + " | ".join(cells + [gain_text(r, results)]) + " |")
    paired = [r for r in rows if r["vs_none"] is not None]
    if paired:
        lines += ["", "## Paired differences against none (same transform)", "", PAIRED_NOTE, "",
                  "| " + " | ".join(["Method", "Transform"] + [f"Δ {n}" for _, n in SUMMARY_COLUMNS]) + " |",
                  "|" + "---|" * (len(SUMMARY_COLUMNS) + 2)]
        lines += ["| " + " | ".join(_cells(r) + [format_difference(r["vs_none"][k], k) for k, _ in SUMMARY_COLUMNS])
                  + " |" for r in paired]
    lines += ["", "## Visibility of the protection (protected vs clean photos)", "",
              "| Method | Transform | PSNR (dB) | SSIM | L∞ (grey levels) | PSNR after transform (dB) |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {' | '.join(_cells(r))} | {format_value(r['psnr_db'], 2)} | "
                     f"{format_value(r['ssim'], 4)} | {format_value(r['linf'], 1)} | "
                     f"{format_value(r['psnr_after_transform_db'], 2)} |")
    lines += ["", "## Setup", ""] + [f"- {k}: {v}" for k, v in setup_items(results)]
    lines += ["", "## Backends", ""] + [f"- {k}: {v}" for k, v in backends(results).items()]
    lines += ["", "## Packages", "", ", ".join(f"{k} {v}" for k, v in
                                              results["environment"]["packages"].items() if v)]
    if results["is_demo"]:
        lines += ["", f"*{DEMO_BANNER}*"]
    return "\n".join(lines) + "\n"
