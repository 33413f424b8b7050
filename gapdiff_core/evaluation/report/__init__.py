"""Reports of a protocol run (:mod:`gapdiff_core.evaluation`): JSON, Markdown in the paper's layout, and one
self-contained HTML page, written together by :func:`write_reports`.

Modules: :mod:`.rows` (one row per method × transform, the tables' columns), :mod:`.facts` (what ran),
:mod:`.markdown`, :mod:`.page` (the HTML page), :mod:`.charts` (inline SVG charts), :mod:`.images` (the page's image
grids). Directions as in the paper's tables: FDFR↑ ISM↓ BRISQUE↑ SER-FIQ↓ (the arrow points to stronger protection).
"""
from __future__ import annotations

import json
from pathlib import Path

from ...io.atomic import write_text
from ..cache import jsonable
from .charts import budget_plots, jpeg_quality, robustness_plots, svg_line_chart
from .facts import DEMO_BANNER, protocol_summary, run_facts
from .markdown import markdown_report
from .page import html_report
from .rows import aggregate, no_face_note

__all__ = ["DEMO_BANNER", "aggregate", "budget_plots", "html_report", "jpeg_quality", "json_report",
           "markdown_report", "no_face_note", "protocol_summary", "robustness_plots", "run_facts", "svg_line_chart",
           "write_reports"]


def json_report(results: dict) -> str:
    """The results as JSON (infinities and NaN as null)."""
    return json.dumps(jsonable(results), indent=2, ensure_ascii=False, allow_nan=False, default=str)


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
