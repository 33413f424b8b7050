"""Batches of image files: expanding inputs (files, folders, globs), guarding inputs against being overwritten,
and laying out output paths that mirror the input folders."""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path
from typing import Iterable, NamedTuple

from .decode import NAME_MAX, UNDECODABLE_PHOTOS, image_extensions, missing_reason



class ExpandedInputs(NamedTuple):
    """Image files found, one message per input entry that yielded nothing (or per photo that cannot be decoded),
    and the folder whose layout outputs mirror (see `output_root`)."""

    paths: list[Path]
    problems: list[str]
    root: Path | None


def iter_image_paths(inputs: Iterable[str | Path], recursive: bool = False, *, out_dir: str | Path | None = None,
                     output_ending: str = "") -> ExpandedInputs:
    """Expand files, folders (images by extension, sorted) and glob patterns; never raises for a bad entry.

    Explicit files are kept whatever their extension (load_image reports them);
    folders and patterns keep image extensions only and skip hidden files. Their HEIC (and, without
    libavif, AVIF) photos are reported in `problems`, not skipped silently. Recursion never follows
    symbolic links to folders (no cycles). Duplicates are removed, first occurrence wins.
    With `out_dir`, folders and patterns leave out earlier outputs: all of `out_dir` when it lies inside the
    folder scanned, and the files named like outputs (ending in `output_ending`) when it is that folder or above.
    """
    paths: list[Path] = []
    problems: list[str] = []
    bases: list[Path] = []
    seen: set[Path] = set()
    out = Path(out_dir).resolve() if out_dir is not None else None

    def earlier_output(f: Path, base: Path) -> bool:
        folder = f.resolve().parent
        if out is None or (folder != out and out not in folder.parents):
            return False
        scanned = base.resolve()
        return (out != scanned and scanned in out.parents) or bool(output_ending and f.name.endswith(output_ending))

    def add(found: list[Path], base: Path, scanned: bool) -> None:
        if scanned:
            found = [f for f in found if not earlier_output(f, base)]
        if found:  # an entry that matched nothing does not shape the output layout
            bases.append(base)
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                paths.append(p)

    for entry in inputs:
        p = Path(entry)
        if p.is_file():
            add([p], p.parent, scanned=False)
        elif p.is_dir():
            found, undecodable = _images_in(p, recursive)
            problems += undecodable
            if not found and not undecodable:
                where = "or its subfolders " if recursive else ""
                problems.append(f"{p}: folder {where}contains no images "
                                f"({', '.join(sorted(image_extensions()))})")
            add(found, p, scanned=True)
        elif glob.has_magic(str(entry)):
            try:
                found, undecodable = _glob_images(p, recursive)
            except ValueError as exc:  # a pattern pathlib cannot use, e.g. '**' inside a name
                problems.append(f"{entry}: invalid pattern ({exc}); use '**' as a whole path part, e.g. dir/**/*.jpg")
                continue
            problems += undecodable
            if not found and not undecodable:
                problems.append(f"{entry}: no image file matches this pattern")
            add(found, _glob_root(p), scanned=True)
        else:
            problems.append(f"{entry}: {missing_reason(p)}")
    return ExpandedInputs(paths, problems, output_root(bases))


def output_root(bases: list[Path]) -> Path | None:
    """The folder outputs mirror: the common ancestor of the inputs' folders (a folder input, a file's folder, a
    glob's fixed part). One folder, or files from one folder, give a flat output; several give their sub-paths,
    so equal names from different folders never collide. None when there is no common ancestor."""
    resolved = {b.resolve() for b in bases}
    if not resolved:
        return None
    try:
        return Path(os.path.commonpath([str(b) for b in resolved]))
    except ValueError:  # different drives
        return None


def _glob_root(pattern: Path) -> Path:
    """The folder a glob pattern starts from: its parts before the first wildcard."""
    root = Path()
    for part in pattern.parts[:-1]:
        if glob.has_magic(part):
            break
        root /= part
    return root


class InputGuard:
    """The input files of a batch, which outputs must never replace: by resolved path and by inode (hard links,
    other spellings). Built once per batch, so each save checks in O(1)."""

    def __init__(self, paths: Iterable[str | Path]):
        self._by_path: dict[Path, Path] = {}
        self._by_inode: dict[tuple[int, int], Path] = {}
        for p in map(Path, paths):
            self._by_path.setdefault(p.resolve(), p)
            try:
                st = p.stat()
            except OSError:
                continue
            self._by_inode.setdefault((st.st_dev, st.st_ino), p)

    def input_at(self, path: Path) -> Path | None:
        """The input that writing `path` would replace, if any."""
        hit = self._by_path.get(path.resolve())
        if hit is not None:
            return hit
        try:
            st = path.stat()
        except OSError:
            return None
        return self._by_inode.get((st.st_dev, st.st_ino))


def _images_in(folder: Path, recursive: bool) -> tuple[list[Path], list[str]]:
    return _pick_images(folder, folder.rglob("*") if recursive else folder.iterdir())


def _glob_images(pattern: Path, recursive: bool) -> tuple[list[Path], list[str]]:
    if not recursive:  # '**' acts as '*': no descent, no cycles
        return _pick_images(_glob_root(pattern), map(Path, glob.glob(str(pattern))))
    root = _glob_root(pattern)  # pathlib's '**' does not follow folder symlinks (glob.glob's does, endlessly)
    return _pick_images(root, root.glob(str(Path(*pattern.parts[len(root.parts):]))))


def _pick_images(base: Path, candidates: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """(sorted image files, one message per photo that cannot be decoded) among `candidates` below `base`, leaving
    out hidden files and anything in hidden folders."""
    extensions = image_extensions()
    images, undecodable = [], []
    for p in candidates:
        suffix = p.suffix.lower()
        if suffix not in extensions and suffix not in UNDECODABLE_PHOTOS:
            continue
        try:
            hidden = any(part.startswith(".") for part in p.relative_to(base).parts)
        except ValueError:
            hidden = p.name.startswith(".")
        if hidden or not p.is_file():
            continue
        if suffix in extensions:
            images.append(p)
        else:
            undecodable.append(f"{p}: skipped, {UNDECODABLE_PHOTOS[suffix]} photos cannot be decoded by this "
                               "installation (Pillow); convert it to JPEG or PNG")
    return sorted(images), sorted(undecodable)


def output_path_for(input_path: str | Path, out_dir: str | Path, suffix: str = ".png", tag: str = "",
                    root: str | Path | None = None) -> Path:
    """Where the processed copy of `input_path` goes: out_dir/[relative dirs/]{stem}_{ext}{tag}{suffix}.

    The source extension is always part of the name, so `a.jpg` and `a.png`
    map to `a_jpg.png` and `a_png.png`. With `root` (`iter_image_paths(...).root`),
    the input's folders below root are mirrored under out_dir, so `x/a.jpg` and
    `y/a.jpg` do not collide either. A name longer than NAME_MAX bytes keeps its
    start and gets a hash of the whole instead of its end.
    """
    input_path = Path(input_path)
    if not suffix.startswith("."):
        suffix = "." + suffix
    ext = input_path.suffix.lstrip(".") or "noext"
    name = _fit_name(f"{input_path.stem}_{ext}", f"{tag}{suffix}")
    out_dir = Path(out_dir)
    if root is not None:
        try:
            rel_parent = input_path.parent.resolve().relative_to(Path(root).resolve())
        except ValueError:
            rel_parent = Path()
        out_dir = out_dir / rel_parent
    return out_dir / name


def _fit_name(base: str, ending: str) -> str:
    """`base + ending`, or, when over NAME_MAX bytes, base cut short + "~" + 8 hex digits of its hash + ending."""
    if len(os.fsencode(base + ending)) <= NAME_MAX:
        return base + ending
    digest = hashlib.sha1(os.fsencode(base)).hexdigest()[:8]
    room = NAME_MAX - len(os.fsencode(ending)) - 1 - len(digest)
    while len(os.fsencode(base)) > room:
        base = base[:-1]
    return f"{base}~{digest}{ending}"


def safe_name(name: str) -> str:
    """`name` with only letters, digits, '-' and '_' (others become '_'), at most 60 characters: a file-name part
    that no photo's name can turn into a path."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]
