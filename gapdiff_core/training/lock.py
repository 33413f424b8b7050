"""The lock on a training output folder: one trainer at a time writes to it.

An advisory ``fcntl.flock`` on ``OUTPUT_DIR/train.lock``, held by the main process for the whole run. The operating
system releases it when that process ends, however it ends, so a crashed trainer leaves nothing held; the file's
text (pid, host, start time) only names the holder in the refusal. Windows has no ``fcntl``: there the folder is
not locked (importing this module must not fail there: the app and the nodes import the training package).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from ..model.checkpoint import printable

LOCK_FILE = "train.lock"


class RunLockedError(ValueError):
    """Another process is training into this output folder; the message names it."""


@contextlib.contextmanager
def holding_run_lock(out: Path) -> Iterator[None]:
    """Hold the exclusive lock on ``out`` (created if missing) while the block runs, or raise RunLockedError."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd, out, exclusive=True)
        # Written in place, not through io.atomic: a rename would put a new, unlocked file under the name.
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_run_unlocked(out: Path) -> None:
    """Raise RunLockedError if a trainer holds ``out`` now (a quick check before loading models; the lock itself
    is taken by the run). Shared, so the processes of one multi-process run can all check at once."""
    path = Path(out) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):  # no lock, or no folder (plan_run says what is wrong)
        return
    try:
        _lock(fd, Path(out), exclusive=False)
    finally:
        os.close(fd)


def _lock(fd: int, out: Path, exclusive: bool) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock (see the module docstring)
        return
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunLockedError(f"{out}: another trainer is writing to this output folder ({_holder(fd)}); wait for it "
                             "to finish, or choose another output_dir") from None


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"pid {int(holder['pid'])} on {printable(holder['host'])}, started {printable(holder['started'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {LOCK_FILE} is held"
