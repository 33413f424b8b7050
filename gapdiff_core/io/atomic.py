"""Atomic writes: a file or a whole folder is there complete, or not at all, even after a kill -9.

Each write goes to a hidden temporary beside its target (same folder, so the same file system), is flushed to
disk (fsync of the data and of the folder), and is then renamed into place. A folder that already exists is first
renamed to ``NAME.old`` and deleted only after the new one is in place: after a kill between the two renames the
complete previous version is ``NAME.old`` (:func:`current` finds it).

Temporaries are named ``.gapdiff-<host>-<pid>-<random>.tmp``: short whatever the target's name (NAME_MAX), and
recognisable, so the first write into a folder removes those of killed processes of this host
(:func:`sweep_stale_temps`), and :func:`recover` removes all of them.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Iterator, Union

PathLike = Union[str, os.PathLike]
TEMP_PREFIX = ".gapdiff-"
OLD_SUFFIX = ".old"    # the previous version of a folder while it is being replaced

_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"([0-9a-f]{8})-([0-9]+)-[A-Za-z0-9_]+\.tmp")
_swept: set[Path] = set()


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


def write_file(path: PathLike, write: Callable[[Path], object], *, overwrite: bool = True) -> Path:
    """Write ``path`` atomically through ``write(tmp)``, which fills the (existing, empty) temporary file ``tmp``.

    The file is fsynced, gets the permissions a plain ``open`` would give it (from the umask), and is renamed into
    place. Without ``overwrite``, an existing ``path`` is never replaced, even one that appears during the write:
    FileExistsError. On any error the temporary is removed and ``path`` is left as it was."""
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise _exists(path)
    fd, tmp = new_temp_file(path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            _create(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return path


def _create(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` only if nothing is there: a hard link (atomic create-if-absent), else a rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError:  # a file system without hard links
        if os.path.lexists(path):
            raise _exists(path) from None
        os.replace(tmp, path)


def _exists(path: Path) -> FileExistsError:
    return FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`write_file`)."""
    return write_file(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def folder_beside(dest: PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest``; when the block ends without an error, its files and folders
    are fsynced and it replaces ``dest`` (:func:`replace_folder`). On an error it is removed and ``dest`` is left as
    it was."""
    dest = Path(dest)
    tmp = new_temp_folder(dest.parent)
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        yield tmp
        for item in tmp.rglob("*"):
            if item.is_file():
                with open(item, "rb+") as f:
                    os.fsync(f.fileno())
            elif item.is_dir():
                fsync_dir(item)
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
    """Delete a folder so that it vanishes at once: renamed into a hidden temporary first, then removed."""
    path = Path(path)
    if not path.exists():
        return
    doomed = new_temp_folder(path.parent)
    os.rename(path, doomed / path.name)
    fsync_dir(path.parent)
    shutil.rmtree(doomed)


def recover(folder: PathLike) -> None:
    """Remove what kills left among ``folder``'s entries: all temporaries (of any process and host), and
    ``NAME.old`` where ``NAME`` is in place (a lone ``NAME.old`` is the complete version and stays). Call it with no
    writer running."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        if _TEMP_NAME.fullmatch(entry.name):
            _remove(entry)
        elif entry.name.endswith(OLD_SUFFIX) and entry.with_name(entry.name[: -len(OLD_SUFFIX)]).exists():
            shutil.rmtree(entry, ignore_errors=True)
    fsync_dir(folder)


# ---------------------------------------------------------------- temporaries


def new_temp_file(folder: PathLike) -> tuple[int, Path]:
    """(fd, path) of a new hidden temporary file in ``folder`` (mode 0600), for a write renamed into place when
    complete. The first temporary a process makes in a folder sweeps that folder (:func:`sweep_stale_temps`)."""
    fd, name = tempfile.mkstemp(**_temp_args(folder))
    return fd, Path(name)


def new_temp_folder(folder: PathLike) -> Path:
    """A new hidden temporary folder in ``folder`` (mode 0700), named and swept as :func:`new_temp_file`."""
    return Path(tempfile.mkdtemp(**_temp_args(folder)))


def _temp_args(folder: PathLike) -> dict:
    key = Path(folder).resolve()
    if key not in _swept:
        _swept.add(key)
        sweep_stale_temps(folder)
    return dict(prefix=f"{TEMP_PREFIX}{_HOST}-{os.getpid()}-", suffix=".tmp", dir=folder)


def sweep_stale_temps(folder: PathLike) -> list[Path]:
    """Remove the temporaries (files and folders) in ``folder`` left by processes of this host that no longer run.
    Those of live processes, of other hosts and of any other naming are never touched."""
    if os.name == "nt":  # no safe liveness probe on Windows (os.kill terminates there)
        return []
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if not match or match[1] != _HOST or entry.is_symlink() or _alive(int(match[2])):
            continue
        if _remove(Path(entry.path)):
            removed.append(Path(entry.path))
    return removed


def _remove(entry: Path) -> bool:
    """Remove a file or a folder tree; False if it could not be removed."""
    try:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    except OSError:
        return False
    return True


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError):  # no such pid can exist
        return False
    return True
