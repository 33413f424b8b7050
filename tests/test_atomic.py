"""gapdiff_core.io.atomic.write_file: a temporary beside the target, fsynced, given the umask's mode, then renamed."""
import errno
import os
import stat

import pytest

from gapdiff_core.io import atomic
from gapdiff_core.io.atomic import _HOST, TEMP_PREFIX


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def _writes(data: bytes):
    return lambda tmp: tmp.write_bytes(data)


def _appears_meanwhile(target):
    """A writer during whose write another process creates ``target``."""
    def write(tmp):
        tmp.write_bytes(b"ours")
        target.write_bytes(b"theirs")
    return write


def test_write_file_replaces_or_creates_only_if_absent(tmp_path, fsynced):
    target = tmp_path / "a.bin"
    assert atomic.write_file(target, _writes(b"one")) == target
    atomic.write_file(target, _writes(b"two"))
    assert target.read_bytes() == b"two" and fsynced.has(target) and fsynced.has(tmp_path)
    with pytest.raises(FileExistsError, match="a.bin"):
        atomic.write_file(target, _writes(b"three"), overwrite=False)
    assert atomic.write_file(tmp_path / "b.bin", _writes(b"new"), overwrite=False).read_bytes() == b"new"
    with pytest.raises(FileExistsError, match="c.bin"):
        atomic.write_file(tmp_path / "c.bin", _appears_meanwhile(tmp_path / "c.bin"), overwrite=False)
    assert (tmp_path / "c.bin").read_bytes() == b"theirs" and target.read_bytes() == b"two"
    assert _names(tmp_path) == ["a.bin", "b.bin", "c.bin"]  # no temporary left


def test_create_if_absent_on_a_file_system_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    assert atomic.write_file(tmp_path / "a.bin", _writes(b"new"), overwrite=False).read_bytes() == b"new"
    with pytest.raises(FileExistsError):
        atomic.write_file(tmp_path / "b.bin", _appears_meanwhile(tmp_path / "b.bin"), overwrite=False)
    assert (tmp_path / "b.bin").read_bytes() == b"theirs" and _names(tmp_path) == ["a.bin", "b.bin"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path, error):
    old = tmp_path / "old.bin"
    old.write_bytes(b"old")

    def fails(tmp):
        tmp.write_bytes(b"half")
        raise error

    for target, overwrite in ((old, True), (tmp_path / "new.bin", True), (tmp_path / "new.bin", False)):
        with pytest.raises(type(error)):
            atomic.write_file(target, fails, overwrite=overwrite)
    assert old.read_bytes() == b"old" and _names(tmp_path) == ["old.bin"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_files_get_their_mode_from_the_umask(tmp_path, umask, mode):
    def private(tmp):  # as safetensors writes: a new file of mode 0600 whatever the umask
        tmp.unlink()
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    previous = os.umask(umask)
    try:
        written = [atomic.write_file(tmp_path / "a", _writes(b"x")), atomic.write_bytes(tmp_path / "b", b"x"),
                   atomic.write_file(tmp_path / "c", private, overwrite=False)]
    finally:
        os.umask(previous)
    assert [stat.S_IMODE(p.stat().st_mode) for p in written] == [mode] * 3


def test_the_first_write_into_a_folder_sweeps_temporaries_of_dead_processes(tmp_path, dead_pid):
    stale_file = tmp_path / f"{TEMP_PREFIX}{_HOST}-{dead_pid}-k1ll3d.tmp"
    stale_folder = tmp_path / f"{TEMP_PREFIX}{_HOST}-{dead_pid}-f0ld3r.tmp"  # a killed folder write's
    live = tmp_path / f"{TEMP_PREFIX}{_HOST}-{os.getppid()}-w0rk1ng.tmp"  # a running process's write
    other_host = tmp_path / f"{TEMP_PREFIX}0badc0de-{dead_pid}-r3m0te.tmp"  # liveness unknown: kept
    foreign = tmp_path / ".a.txt.tmp-abcd"  # not ours
    for p in (stale_file, live, other_host, foreign):
        p.write_bytes(b"partial")
    stale_folder.mkdir()
    (stale_folder / "weights.safetensors").write_bytes(b"partial")
    atomic.write_text(tmp_path / "a.txt", "complete")
    assert _names(tmp_path) == sorted(p.name for p in (foreign, live, other_host, tmp_path / "a.txt"))
    atomic.recover(tmp_path)  # with no writer running: every temporary of ours goes, whoever made it
    assert _names(tmp_path) == [foreign.name, "a.txt"]


def test_folder_writes_and_removals_use_the_same_temporaries(tmp_path, monkeypatch):
    with atomic.folder_beside(tmp_path / "f") as tmp:
        (tmp / "x").write_text("x")
        assert tmp.parent == tmp_path and atomic._TEMP_NAME.fullmatch(tmp.name)

    def killed(path, *args, **kwargs):  # a kill in the middle of the removal
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic.remove_folder(tmp_path / "f")
    monkeypatch.undo()
    (leftover,) = tmp_path.iterdir()  # "f" vanished at once, into a temporary
    assert atomic._TEMP_NAME.fullmatch(leftover.name) and (leftover / "f" / "x").is_file()
    atomic.recover(tmp_path)
    assert _names(tmp_path) == []
