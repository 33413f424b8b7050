"""Gradio UI shared by the standalone app (`gapdiff app`) and the AUTOMATIC1111 / Forge tab.

`build_ui(settings)` returns the Blocks; `logic` holds everything the UI does without Gradio.
"""
from .logic import UIError, UISettings


def build_ui(settings=None):
    """The GAP-Diff `gr.Blocks` (imports Gradio on first use); `settings` is a UISettings or a callable."""
    from .blocks import build_ui as _build

    return _build(settings)


__all__ = ["UIError", "UISettings", "build_ui"]
