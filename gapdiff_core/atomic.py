"""Atomic writes: a file or a whole folder is there complete, or not at all, even after a kill -9.

Each write goes to a hidden temporary name beside its target (same folder, so the same file system), is flushed to
disk (fsync of the data and of the folder), and is then renamed into place. A folder that already exists is first
renamed to ``NAME.old`` and deleted only after the new one is in place: after a kill between the two renames the
complete previous version is ``NAME.old`` (:func:`current` finds it). :func:`recover` removes what a kill left behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]
TMP_MARK = ".tmp-"     # temporaries are named ".NAME.tmp-XXXXXXXX"
OLD_SUFFIX = ".old"    # the previous version of a folder while it is being replaced


def fsync_dir(folder: PathLike) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (permissions follow the umask, as a plain ``open`` would)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def folder_beside(dest: PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest``; when the block ends without an error, its files are fsynced
    and it replaces ``dest`` (:func:`replace_folder`). On an error it is removed and ``dest`` is left as it was."""
    dest = Path(dest)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}{TMP_MARK}"))
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        yield tmp
        for item in tmp.rglob("*"):
            if item.is_file():
                with open(item, "rb+") as f:
                    os.fsync(f.fileno())
        fsync_dir(tmp)
        replace_folder(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(tmp: PathLike, dest: PathLike) -> None:
    """Rename the finished folder ``tmp`` to ``dest``. An existing ``dest`` is renamed to ``dest.old`` first and
    deleted only once ``tmp`` is in place, so a kill at any moment leaves ``dest`` or ``dest.old`` complete."""
    tmp, dest = Path(tmp), Path(dest)
    old = dest.with_name(dest.name + OLD_SUFFIX)
    if dest.exists():
        if old.exists():  # left by an earlier kill after its first rename: dest is the complete one
            shutil.rmtree(old)
        os.rename(dest, old)
    os.rename(tmp, dest)
    fsync_dir(dest.parent)
    if old.exists():
        shutil.rmtree(old)


def current(dest: PathLike) -> Path | None:
    """The complete version of a folder written by :func:`replace_folder`: ``dest``, else ``dest.old``, else None."""
    dest = Path(dest)
    old = dest.with_name(dest.name + OLD_SUFFIX)
    return dest if dest.exists() else old if old.exists() else None


def remove_folder(path: PathLike) -> None:
    """Delete a folder so that it vanishes at once: renamed to a hidden temporary first, then removed."""
    path = Path(path)
    if not path.exists():
        return
    doomed = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}"))
    os.rename(path, doomed / path.name)
    fsync_dir(path.parent)
    shutil.rmtree(doomed)


def recover(folder: PathLike) -> None:
    """Remove what kills left among ``folder``'s entries: hidden temporaries, and ``NAME.old`` where ``NAME`` is in
    place (a lone ``NAME.old`` is the complete version and stays). Call it with no writer running."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") and TMP_MARK in entry.name:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        elif entry.name.endswith(OLD_SUFFIX) and entry.with_name(entry.name[: -len(OLD_SUFFIX)]).exists():
            shutil.rmtree(entry, ignore_errors=True)
    fsync_dir(folder)
