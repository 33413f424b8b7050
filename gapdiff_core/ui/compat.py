"""The one place that knows Gradio versions differ: 3.41 (A1111 1.10), 4.x (Forge) and the current release.

Keyword arguments a version does not know are dropped (checked against the real signatures), and the few
renamed options are mapped here.
"""
from __future__ import annotations

import inspect

import gradio as gr

GRADIO_VERSION = gr.__version__
GRADIO_MAJOR = int(GRADIO_VERSION.split(".")[0])
# File uploads reach functions as str paths in 4.x+, as tempfile wrappers (with .name) in 3.x.
FILE_TYPE = "filepath" if GRADIO_MAJOR >= 4 else "file"


def _accepted(fn, kwargs: dict) -> dict:
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def make(component, **kwargs):
    """Build a component with the keyword arguments this Gradio version accepts."""
    return component(**_accepted(component.__init__, kwargs))


def listen(event, fn, **kwargs):
    """Attach `fn` to an event (e.g. `button.click`) with the keyword arguments this version accepts."""
    return event(fn, **_accepted(event, kwargs))


def enable_queue(blocks, concurrency: int = 1, max_size: int = 64):
    if GRADIO_MAJOR >= 4:
        return blocks.queue(default_concurrency_limit=concurrency, max_size=max_size)
    return blocks.queue(concurrency_count=max(concurrency, 2), max_size=max_size)


def launch(blocks, **kwargs):
    """`blocks.launch` without the options this version lacks (e.g. `max_file_size` before 4.x)."""
    return blocks.launch(**_accepted(blocks.launch, kwargs))
