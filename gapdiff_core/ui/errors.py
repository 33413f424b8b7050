"""How errors reach a person: a UIError as its own message, running out of memory as advice, anything unexpected
as one line. The log keeps a user's mistake to one line (its traceback at debug level); only an unexpected error
logs its traceback."""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Callable

import gradio as gr
import torch

from .compat import make
from .settings import UIError

log = logging.getLogger("gapdiff.ui")
OUT_OF_MEMORY = "Out of memory: use fewer or smaller photos, mode 'working', or a smaller precision."


def out_of_memory(exc: Exception) -> bool:
    """Host RAM (MemoryError) or an accelerator's memory (torch.OutOfMemoryError, alias torch.cuda.OutOfMemoryError:
    CUDA, ROCm). Apple's MPS backend raises a plain RuntimeError ("MPS backend out of memory ..."), so for a
    RuntimeError the text is the fallback test."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def shown(exc: Exception, where: str) -> gr.Error:
    """The message a person sees for `exc` raised in `where`; Gradio prints no traceback for it."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, UIError) or out_of_memory(exc):
        message = str(exc) if isinstance(exc, UIError) else OUT_OF_MEMORY
        log.info("gapdiff UI: %s: %s", where, message)
        log.debug("gapdiff UI: traceback of the message above", exc_info=exc)
    else:
        log.error("gapdiff UI: unexpected error in %s", where, exc_info=exc)
        message = f"Unexpected error ({type(exc).__name__}: {exc}). Details are in the server log."
    return make(gr.Error, message=message, print_exception=False)


def readable(fn: Callable) -> Callable:
    """`fn` (a function or a generator function) with every exception turned into `shown(exc)`."""
    if inspect.isgeneratorfunction(fn):
        def wrapped_gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - turned into a message for the user
                raise shown(exc, fn.__name__) from None
        return functools.wraps(fn)(wrapped_gen)

    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise shown(exc, fn.__name__) from None
    return functools.wraps(fn)(wrapped)
