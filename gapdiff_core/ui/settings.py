"""What a host tells the UI (`UISettings`), the one error type a user can fix (`UIError`), and the pixel limit."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

from ..common.budget import DEFAULT_BUDGET

# Peak memory of one photo through protect_photo (working mode, fp32, CPU) is about this many bytes per pixel
# above the loaded generator (bench/app_memory.py: 40-43), so the default pixel limit keeps a photo near 1.1 GB.
# Photos of a request run one after another, so this bounds the request too.
BYTES_PER_PIXEL = 45
DEFAULT_MAX_PIXELS = 25_000_000
# Local surrogates are also looked for in this folder beside the models folder (ComfyUI's name, where
# `gapdiff demo-assets` writes the tiny one)
SURROGATES_FOLDER = "checkpoints"


class UIError(ValueError):
    """A problem the user can fix; the message is shown as is."""


@dataclass
class UISettings:
    """Host-provided settings. The A1111 tab passes a callable returning fresh settings on every request."""

    models_dir: str | os.PathLike | None = None
    device: str = "auto"
    precision: str = "auto"
    default_budget: float = DEFAULT_BUDGET
    max_photos: int = 64  # per request, in each file list (Protect, Evaluate)
    max_pixels: int = DEFAULT_MAX_PIXELS  # per photo: memory grows with it (BYTES_PER_PIXEL)
    work_lock: Callable[[], ContextManager] = contextlib.nullcontext  # e.g. A1111's queue_lock
    # Folders a local surrogate may be read from (default: the models folder). Paths outside them get the same
    # answer as missing ones, so the tab cannot be used to probe the server's file system.
    surrogate_dirs: tuple = ()
    preferred_generator: str | None = None  # the file name the page opens with when it is in the models folder

    def surrogate_roots(self) -> list[Path]:
        return [Path(d) for d in (self.surrogate_dirs or (self.models_dir,)) if d]
