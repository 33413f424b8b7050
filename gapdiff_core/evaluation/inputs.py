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


@dataclass
class Inputs:
    """The identities found, and what a user should know about how they were read (printed and in the report)."""

    identities: list
    warnings: list


def find_identities(root: str | Path) -> list[Identity]:
    """The identities of :func:`scan_inputs`."""
    return scan_inputs(root).identities


def scan_inputs(root: str | Path) -> Inputs:
    """Identities under ``root``, and warnings for what was skipped or stood in:

    - Anti-DreamBooth layout: ``root/set_B`` (+ ``set_C``) is one identity; ``root/<identity>/set_B`` many. The set
      folders' names are matched ignoring case (``Set_B`` is ``set_B``). Other subfolders are skipped, each with a
      warning. ``set_A`` (optional) is handed to the protections that fine-tune on clean photos (ASPL, FSMG,
      SimAC), not to the test attack. Without photos in ``set_C`` the identity's ``set_B`` serves as the reference
      (a warning, and the layout says so).
    - A plain folder of photos: sorted by name, the first half (rounded up) is protected and attacked, the rest
      are the clean references; a single photo is both (a warning).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"evaluation input {root} is not a folder")
    warnings: list[str] = []

    def identity(folder: Path, name: str) -> Identity:
        b = list_photos(_set_folder(folder, "set_B"))
        if not b:
            raise ValueError(f"{_set_folder(folder, 'set_B')} holds no photos")
        c_folder, a_folder = _set_folder(folder, "set_C"), _set_folder(folder, "set_A")
        c = list_photos(c_folder) if c_folder else []
        a = list_photos(a_folder) if a_folder else []
        if not c:
            warnings.append(f"{name}: {'set_C holds no photos' if c_folder else 'no set_C folder'}; set_B (the photos "
                            "that are protected and attacked) stands in as the clean reference, so ISM and the "
                            "identity-learning gap compare the attacked model with its own training photos")
        return Identity(name, b, c or b, "anti-dreambooth" if c else "anti-dreambooth (no set_C: set_B as reference)",
                        a)

    if _set_folder(root, "set_B"):
        return Inputs([identity(root, root.resolve().name)], warnings)
    subs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    with_b = [d for d in subs if _set_folder(d, "set_B")]
    if with_b:
        identities = [identity(d, d.name) for d in with_b]
        warnings += [f"{d.name}: skipped, no set_B folder (the Anti-DreamBooth layout: {d.name}/set_B with the photos "
                     "to protect, set_C with clean references)" for d in subs if d not in with_b]
        return Inputs(identities, warnings)
    photos = list_photos(root)
    if not photos:
        raise ValueError(f"{root}: no photos, and no set_B folders (Anti-DreamBooth layout <identity>/set_B, set_C)")
    half = (len(photos) + 1) // 2
    if len(photos) == 1:
        warnings.append(f"{root.resolve().name}: one photo, both attacked and clean reference")
    return Inputs([Identity(root.resolve().name, photos[:half], photos[half:] or photos[:half], "plain-folder")],
                  warnings)


def _set_folder(folder: Path, name: str) -> Path | None:
    """The subfolder of ``folder`` called ``name``, ignoring case (``Set_B``, ``SET_B``); None if there is none.
    Two that differ only in case are refused: which one is meant cannot be known."""
    found = [d for d in folder.iterdir() if d.name.lower() == name.lower() and d.is_dir()]
    if len(found) > 1:
        raise ValueError(f"{folder}: {' and '.join(sorted(d.name for d in found))} differ only in case; merge them "
                         f"into one {name} folder")
    return found[0] if found else None


def file_digest(path: Path) -> str:
    """A short hash of a file's bytes: what the stage cache keys hold for input photos and checkpoints."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
