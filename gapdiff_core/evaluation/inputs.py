"""The protocol's input photos: identities found in the Anti-DreamBooth layout or in a plain folder."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ..io import image_extensions


@dataclass
class Identity:
    """One identity: the photos that get protected and attacked (set_B), its clean references (set_C) and its
    clean set_A (the clean photos ASPL-style protections fine-tune their surrogate on; empty if there is none)."""

    name: str
    attacked: list
    references: list
    layout: str  # "anti-dreambooth" | "plain-folder"
    clean_set: list = field(default_factory=list)


def list_photos(folder: Path) -> list[Path]:
    """The photos directly in ``folder`` (extensions of :func:`gapdiff_core.io.image_extensions`), by name."""
    suffixes = image_extensions()
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def find_identities(root: str | Path) -> list[Identity]:
    """Identities under ``root``:

    - Anti-DreamBooth layout: ``root/set_B`` (+ ``set_C``) is one identity; ``root/<identity>/set_B`` many.
      ``set_A`` (optional) is handed to the protections that fine-tune on clean photos (ASPL, FSMG, SimAC), not
      to the test attack. Without ``set_C`` the identity's ``set_B`` serves as the reference (reported in the
      layout).
    - A plain folder of photos: sorted by name, the first half (rounded up) is protected and attacked, the rest
      are the clean references; a single photo is both.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"evaluation input {root} is not a folder")

    def identity(folder: Path, name: str) -> Identity:
        b = list_photos(folder / "set_B")
        if not b:
            raise ValueError(f"{folder / 'set_B'} holds no photos")
        c = list_photos(folder / "set_C") if (folder / "set_C").is_dir() else []
        a = list_photos(folder / "set_A") if (folder / "set_A").is_dir() else []
        return Identity(name, b, c or b, "anti-dreambooth" if c else "anti-dreambooth (no set_C: set_B as reference)",
                        a)

    if (root / "set_B").is_dir():
        return [identity(root, root.resolve().name)]
    subs = sorted(d for d in root.iterdir() if d.is_dir() and (d / "set_B").is_dir())
    if subs:
        return [identity(d, d.name) for d in subs]
    photos = list_photos(root)
    if not photos:
        raise ValueError(f"{root}: no photos, and no set_B folders (Anti-DreamBooth layout <identity>/set_B, set_C)")
    half = (len(photos) + 1) // 2
    return [Identity(root.resolve().name, photos[:half], photos[half:] or photos[:half], "plain-folder")]


def file_digest(path: Path) -> str:
    """A short hash of a file's bytes: what the stage cache keys hold for input photos and checkpoints."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
