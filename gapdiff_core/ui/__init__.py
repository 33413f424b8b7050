"""Gradio UI shared by the standalone app (`gapdiff app`) and the AUTOMATIC1111 / Forge tab.

`build_ui(settings)` returns the Blocks (`blocks.py`; Gradio is imported there, in `compat.py`, the one place that
knows its versions differ, and in `errors.py`, how errors reach a person and the log). What the page does without
Gradio: `generators` (the models folder, the loaded Protectors), `protect_tab`, `robustness_tab` (with
`robustness_text`, its numbers in words), `evaluate_tab`, with `uploads` (uploads in, private output folders out)
and `settings`.
"""
from .settings import UIError, UISettings


def build_ui(settings=None):
    """The GAP-Diff `gr.Blocks` (imports Gradio on first use); `settings` is a UISettings or a callable."""
    from .blocks import build_ui as _build

    return _build(settings)


__all__ = ["UIError", "UISettings", "build_ui"]
