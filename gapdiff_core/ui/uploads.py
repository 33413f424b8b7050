"""Uploads in and outputs out: an upload's path and readable name, its pixels within the server's limits, and the
private per-request output folders every shown or downloaded PNG is written to."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from ..io import ImageError, LoadedImage, load_image, safe_name
from .settings import DEFAULT_MAX_PIXELS, UIError, UISettings

# One private folder per user (0700): photos and their protected versions are nobody else's business.
OUTPUT_ROOT = Path(tempfile.gettempdir()) / f"gapdiff-ui-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
OUTPUT_MAX_AGE_S = 6 * 3600


def as_list(x) -> list:
    return [] if not x else (x if isinstance(x, list) else [x])


def check_count(files: list, s: UISettings, what: str) -> None:
    if len(files) > s.max_photos:
        raise UIError(f"{len(files)} {what} uploaded; at most {s.max_photos} at a time.")


def file_path(upload) -> str:
    """Gradio passes uploads as str paths (4.x+) or tempfile wrappers with `.name` (3.x)."""
    if isinstance(upload, dict):
        return upload.get("path") or upload.get("name")
    return str(getattr(upload, "name", upload))


def safe_stem(path: Path) -> str:
    return safe_name(path.stem) or "photo"


def load_upload(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, label: str | None = None) -> LoadedImage:
    """The photo at `path`, or a UIError naming it (by `label` or its file name, never the server-side path)."""
    try:
        return load_image(path, max_pixels=max_pixels)
    except ImageError as exc:
        raise UIError(f"{label or path.name}: {_reason(exc, max_pixels)}") from exc


def _reason(exc: ImageError, max_pixels: int) -> str:
    """The problem without the image reader's path (a server-side temp path); the server's limit in this server's
    words."""
    if exc.kind == "pixel_limit":
        return (f"larger than this server's limit of {max_pixels / 1e6:g} megapixels per photo; "
                "downscale it and upload again.")
    return exc.reason


def private_dir(path: Path) -> Path:
    """`path` as a folder only this user can enter (0700), refused if another user owns it or it is a link."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if path.is_symlink() or not path.is_dir() or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        raise UIError(f"{path} belongs to another user or is not a folder; remove it or set TMPDIR.")
    if st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def new_output_dir() -> Path:
    """A fresh folder for one request's files inside this user's private OUTPUT_ROOT; folders older than a few
    hours are removed."""
    private_dir(OUTPUT_ROOT)
    now = time.time()
    for old in OUTPUT_ROOT.iterdir():
        with contextlib.suppress(OSError):
            if old.is_dir() and now - old.stat().st_mtime > OUTPUT_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
    out = OUTPUT_ROOT / uuid.uuid4().hex
    out.mkdir()
    return out
