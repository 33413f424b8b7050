"""The one place that knows Gradio versions differ: 3.41 (A1111 1.10), 4.x (Forge) and the current release.

Keyword arguments a version does not know are dropped (checked against the real signatures), with one warning
per component and keyword, and the few renamed options are mapped here.
"""
from __future__ import annotations

import inspect
import warnings

import gradio as gr

GRADIO_VERSION = gr.__version__
GRADIO_MAJOR = int(GRADIO_VERSION.split(".")[0])
# File uploads reach functions as str paths in 4.x+, as tempfile wrappers (with .name) in 3.x.
FILE_TYPE = "filepath" if GRADIO_MAJOR >= 4 else "file"


_WARNED: set[tuple[str, str]] = set()


def _accepted(fn, kwargs: dict, name: str) -> dict:
    """The `kwargs` that `fn` accepts; each one dropped is reported once per (name, keyword)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    for key in kwargs.keys() - params.keys():
        if (name, key) not in _WARNED:
            _WARNED.add((name, key))
            warnings.warn(f"gapdiff: Gradio {GRADIO_VERSION} {name} has no option {key!r}; it is left out",
                          stacklevel=3)
    return {k: v for k, v in kwargs.items() if k in params}


def make(component, **kwargs):
    """Build a component with the keyword arguments this Gradio version accepts."""
    return component(**_accepted(component.__init__, kwargs, f"gr.{component.__name__}"))


def listen(event, fn, **kwargs):
    """Attach `fn` to an event (e.g. `button.click`) with the keyword arguments this version accepts."""
    owner = getattr(event, "__self__", None)
    name = getattr(event, "event_name", None) or getattr(event, "__name__", "event")
    return event(fn, **_accepted(event, kwargs, f"gr.{type(owner).__name__}.{name}" if owner is not None else name))


def enable_queue(blocks, concurrency: int = 1, max_size: int = 64):
    if GRADIO_MAJOR >= 4:
        return blocks.queue(default_concurrency_limit=concurrency, max_size=max_size)
    return blocks.queue(concurrency_count=max(concurrency, 2), max_size=max_size)


def launch(blocks, **kwargs):
    """`blocks.launch` without the options this version lacks (e.g. `max_file_size` before 4.x)."""
    return blocks.launch(**_accepted(blocks.launch, kwargs, "Blocks.launch"))



def when_done(event, fn, **kwargs) -> None:
    """Run `fn` when `event` ends, whether it succeeded or failed: `.then` (which Gradio 6 skips after an error)
    and `.failure` where the version has it (4+; in 3.x an error ends the chain)."""
    listen(event.then, fn, **kwargs)
    if getattr(event, "failure", None) is not None:
        listen(event.failure, fn, **kwargs)
