"""Fixtures shared by several test modules."""
import contextlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from gapdiff_core import Generator, GeneratorInfo, save_generator
from gapdiff_core.samples import SAMPLES_DIR

# The normalisation kernels are built once per test session in a folder of their own, not the user's cache.
os.environ.setdefault("GAPDIFF_KERNEL_CACHE", tempfile.mkdtemp(prefix="gapdiff-kernels-"))


@pytest.fixture(scope="module")
def saturated_generator_file(tmp_path_factory):
    """A demo-labelled ngf=8 generator file whose tanh output saturates, so protection reaches the budget."""
    torch.manual_seed(0)
    g = Generator(ngf=8)
    with torch.no_grad():
        g.dconv8.weight.mul_(40)
    path = tmp_path_factory.mktemp("models") / "g.safetensors"
    save_generator(g.eval(), path, GeneratorInfo(ngf=8, budget=8, demo=True, provenance="test"))
    return path


@pytest.fixture(scope="module")
def trained_stats_generator():
    """An ngf=16 generator (seed 1) whose BatchNorm running statistics come from two train-mode passes over random
    photos, in eval mode."""
    torch.manual_seed(1)
    g = Generator(ngf=16).train()
    with torch.no_grad():
        for _ in range(2):
            g(torch.rand(2, 3, 512, 512) * 2 - 1)
    return g.eval()


@pytest.fixture(scope="module")
def identity_folder(tmp_path_factory):
    """One identity in the Anti-DreamBooth layout, small: set_B two sample photos (160 px wide), set_C a third
    (320 px wide)."""
    root = tmp_path_factory.mktemp("photos") / "obama"
    for name, dest, side in (("obama.jpg", "set_B/a.png", 160), ("obama2.jpg", "set_B/b.png", 160),
                             ("obama3.jpg", "set_C/c.png", 320)):
        (root / dest).parent.mkdir(parents=True, exist_ok=True)
        with Image.open(SAMPLES_DIR / name) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side * 2))
            im.save(root / dest)
    return root


@pytest.fixture(scope="module")
def toy_generator_file(tmp_path_factory):
    """A random, demo-labelled ngf=4 generator file (seed 0)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gen") / "toy.safetensors"
    save_generator(Generator(ngf=4).eval(), path, GeneratorInfo(ngf=4, demo=True, provenance="test, random"))
    return path


def _zip_bomb_pth(path: Path) -> Path:
    """A .pth archive of under 1 MB whose tensor entry unpacks to 64 MB of zeros."""
    small = path.with_name("small.tmp")
    torch.save({"conv1.weight": torch.zeros(4)}, small)
    with zipfile.ZipFile(small) as src, zipfile.ZipFile(path, "w") as out:
        for entry in src.infolist():
            if entry.filename.endswith("/data/0"):  # 64 MB of zeros deflate to 64 KB
                packed = zipfile.ZipInfo(entry.filename)
                packed.compress_type = zipfile.ZIP_DEFLATED
                with out.open(packed, "w") as f:
                    for _ in range(64):
                        f.write(bytes(1 << 20))
            else:
                out.writestr(entry, src.read(entry))
    small.unlink()
    assert path.stat().st_size < 1 << 20
    return path


class FsyncLog:
    """The files and folders flushed with os.fsync while it recorded (by device and inode, so a file renamed
    after its fsync is still found)."""

    def __init__(self):
        self.inodes: set[tuple[int, int]] = set()

    def has(self, path) -> bool:
        st = os.stat(path)
        return (st.st_dev, st.st_ino) in self.inodes


@contextlib.contextmanager
def _recording_fsyncs():
    log, real = FsyncLog(), os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        log.inodes.add((st.st_dev, st.st_ino))
        real(fd)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", fsync)
        yield log


@pytest.fixture(scope="module")
def record_fsyncs():
    """``with record_fsyncs() as log:`` records the fsyncs made in the block (os.fsync still runs); ``log.has(path)``
    (for module-scoped fixtures; tests use ``fsynced``)."""
    return _recording_fsyncs


@pytest.fixture
def fsynced():
    """The fsyncs made during the test (see ``record_fsyncs``)."""
    with _recording_fsyncs() as log:
        yield log


@pytest.fixture
def dead_pid() -> int:
    """The id of a process of this host that no longer runs (as a killed writer's)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


@pytest.fixture
def zip_bomb_pth():
    """``make(path) -> path``: writes a zip-bomb .pth there (under 1 MB, declaring a 64 MB tensor)."""
    return _zip_bomb_pth


def pytest_collection_modifyitems(config, items):
    """Tests that start Ray or several processes are slow by nature: `-m "not slow"` leaves them out too."""
    for item in items:
        if item.get_closest_marker("ray") or item.get_closest_marker("distributed"):
            item.add_marker(pytest.mark.slow)
