"""Photos of One Person and Save Images: photos of any sizes in and out, each kept at its own size.

A ComfyUI IMAGE batch holds photos of one size (core ImageBatch crops and resizes every photo to the first one), so
these nodes pass photos as a ComfyUI list: a node downstream runs once per photo, and the nodes that need the whole
set (the test attack, the evaluation) take the list at once (INPUT_IS_LIST).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..gapdiff_core.io import batch_to_uint8, iter_image_paths, load_image, safe_name, save_image
from . import host
from .attack import ATTACKED
from .protection import GENERATOR

CATEGORY = "GAP-Diff"
SAMPLE_PHOTOS = "gapdiff_sample_face_*.jpg"


def photo_paths(photos: str) -> list[Path]:
    """The image files that `photos` (files, folders or glob patterns in ComfyUI's input folder, one per line)
    names, in order; ValueError naming every entry that is outside the input folder or finds nothing."""
    entries = [line.strip() for line in photos.splitlines() if line.strip()]
    if not entries:
        raise ValueError("photos is empty: name files, folders or patterns (e.g. alice/*.jpg) in ComfyUI's input "
                         "folder, one per line")
    outside = [e for e in entries if os.path.isabs(e) or ".." in Path(e).parts]
    if outside:
        raise ValueError(f"photos: {', '.join(map(repr, outside))} must be inside ComfyUI's input folder "
                         "(a relative name without '..')")
    root = Path(host.input_folder())
    found = iter_image_paths([root / e for e in entries])
    if found.problems:
        raise ValueError("photos: " + "; ".join(found.problems))
    return found.paths


class LoadPhotos:
    DESCRIPTION = ("Loads photos of one person from ComfyUI's input folder, each at its own size and orientation "
                   "(EXIF applied), as a list: the nodes after it run once per photo, so no photo is cropped or "
                   "resized to match another. Name files, folders or patterns (alice/*.jpg), one per line. "
                   "`names` holds each photo's file name, for Save Images (GAP-Diff).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("photos", "names")
    OUTPUT_IS_LIST = (True, True)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"photos": ("STRING", {
            "default": SAMPLE_PHOTOS, "multiline": True,
            "tooltip": "Files, folders or glob patterns in ComfyUI's input folder, one per line; photos of any "
                       "sizes."})}}

    @classmethod
    def VALIDATE_INPUTS(cls, photos):
        try:
            photo_paths(photos)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def IS_CHANGED(cls, photos):
        """Changes when a photo is added, removed or rewritten, so ComfyUI reloads them then only."""
        try:
            paths = photo_paths(photos)
        except ValueError as exc:
            return str(exc)
        stats = "\n".join(f"{p}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}" for p in paths)
        return hashlib.sha256(stats.encode()).hexdigest()

    def load(self, photos):
        images, names = [], []
        for path in photo_paths(photos):
            host.check_interrupted()
            images.append(host.core_to_image(load_image(path).tensor()))
            names.append(path.stem)
        return (images, names)


def is_demo(generator, attacked_model) -> bool:
    """Whether images came from a demo generator or from an attack on the demo model (either may be None)."""
    return bool((generator is not None and getattr(generator.info, "demo", False))
                or (attacked_model is not None and attacked_model.surrogate.is_demo))


def _free_path(folder: Path, stem: str) -> Path:
    n = 1
    while (folder / f"{stem}_{n:05}.png").exists():
        n += 1
    return folder / f"{stem}_{n:05}.png"


class SaveImages:
    DESCRIPTION = ("Saves every image as a PNG in ComfyUI's output folder at its own size, without metadata and "
                   "never over an existing file: <filename_prefix>_<name>[_DEMO]_00001.png, where name is the "
                   "photo's (from Photos of One Person) and DEMO marks the images of a demo generator or of an "
                   "attack on the demo model (connect the one that made them).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {}),
            "filename_prefix": ("STRING", {"default": "gapdiff/protected",
                                           "tooltip": "Folder and start of the file names, inside the output "
                                                      "folder."}),
        }, "optional": {
            "names": ("STRING", {"forceInput": True, "tooltip": "Each photo's name (Photos of One Person)."}),
            "generator": (GENERATOR, {"tooltip": "The generator that protected the images: a demo one puts DEMO "
                                                 "in every file name."}),
            "attacked_model": (ATTACKED, {"tooltip": "The attacked model that generated the images: an attack on "
                                                     "the demo model puts DEMO in every file name."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix):
        if not filename_prefix.strip() or os.path.isabs(filename_prefix) or ".." in Path(filename_prefix).parts:
            return f"filename_prefix must be a name inside the output folder (no '..'), got {filename_prefix!r}"
        return True

    def save(self, images, filename_prefix, names=None, generator=None, attacked_model=None):
        out = Path(host.output_folder())
        prefix = Path(filename_prefix)
        folder = out / prefix.parent
        folder.mkdir(parents=True, exist_ok=True)
        stem = "_".join(filter(None, (prefix.name, names and safe_name(names),
                                      "DEMO" if is_demo(generator, attacked_model) else "")))
        subfolder = "" if prefix.parent == Path(".") else prefix.parent.as_posix()
        saved = []
        for rgb in batch_to_uint8(host.image_to_core(images)):
            path = save_image(_free_path(folder, stem), rgb)
            saved.append({"filename": path.name, "subfolder": subfolder, "type": "output"})
        return {"ui": {"images": saved}}

