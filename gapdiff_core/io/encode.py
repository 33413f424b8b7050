"""Safe image encoding (the only place PIL/NumPy meet the core on the way out).

`save_image` is atomic (temp file in the destination folder, fsync, then rename), never replaces an existing file
unless asked, never replaces a protected input even when asked, and strips EXIF (GPS included), XMP and comments
unless `keep_metadata=True`. The ICC colour profile is kept by default: it carries no personal data and without it
colours shift on wide-gamut photos. JPEG cannot store transparency, so saving an alpha channel as JPEG raises
instead of silently dropping it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from . import atomic
from .decode import SAVE_FORMATS, ImageError
from .paths import InputGuard
from .png_writer import encode_png

def to_uint8(t: torch.Tensor) -> np.ndarray:
    """1x3xHxW or 3xHxW tensor in [0, 1] -> HxWx3 uint8, rounded to nearest (values clamped to [0, 1])."""
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"to_uint8 expects one image, got a batch of {t.shape[0]}; convert each image")
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"to_uint8 expects 1x3xHxW or 3xHxW, got shape {tuple(t.shape)}")
    return batch_to_uint8(t[None])[0]


def batch_to_uint8(x: torch.Tensor) -> np.ndarray:
    """Bx3xHxW tensor in [0, 1] -> BxHxWx3 uint8, rounded to nearest (values clamped to [0, 1]; NaN refused)."""
    x = x.detach().to("cpu", torch.float32)
    if torch.isnan(x).any():
        raise ValueError("to_uint8: tensor contains NaN values")
    return x.clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


# ---------------------------------------------------------------- encoding


def save_image(
    path: str | Path,
    rgb_uint8: np.ndarray,
    alpha: np.ndarray | None = None,
    *,
    quality: int = 95,
    keep_metadata: bool = False,
    metadata: dict | None = None,
    lossless_webp: bool = True,
    jpeg_subsampling: str = "4:4:4",
    overwrite: bool = False,
    protect_paths: Iterable[str | Path] | InputGuard = (),
) -> Path:
    """Write an image atomically; return the path written.

    Format from the suffix (.png, .jpg/.jpeg, .webp, .tif/.tiff; no suffix -> .png
    is appended). EXIF/GPS/XMP are written only with keep_metadata=True; the ICC
    profile from `metadata` is always kept. JPEG keeps full chroma (4:4:4) unless
    `jpeg_subsampling` says otherwise ("4:2:0" is what platforms use). Refuses to replace an existing file
    unless overwrite=True, and any path in `protect_paths` even then (pass an InputGuard when saving many files).
    """
    path = Path(path)
    if path.suffix == "":
        path = path.with_name(path.name + ".png")
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(path, f"cannot write '{path.suffix}' files; use .png, .jpg, .webp or .tif",
                         "unsupported_format")
    pixels = _pixels(path, rgb_uint8, alpha, fmt)
    guard = protect_paths if isinstance(protect_paths, InputGuard) else InputGuard(protect_paths)
    _check_destination(path, overwrite, guard)
    options = _save_options(fmt, quality, lossless_webp, keep_metadata, metadata or {}, jpeg_subsampling)
    if not path.parent.is_dir():
        raise ImageError(path, f"output folder {path.parent} does not exist; create it first", "no_folder")
    started = False

    def write(tmp: Path) -> None:
        nonlocal started
        started = True
        tmp.write_bytes(_encode(pixels, fmt, options))
        _check_destination(path, overwrite, guard)  # again: an input or a file may have appeared meanwhile

    try:
        atomic.write_file(path, write, overwrite=overwrite)
    except ImageError:
        raise
    except FileExistsError:
        raise _exists(path) from None
    except (OSError, ValueError) as exc:
        if not started:  # the temporary file could not be made
            raise ImageError(path, f"cannot write in {path.parent} ({exc}); choose a writable output folder",
                             "not_writable") from exc
        raise ImageError(path, f"could not write the image ({exc}); check free space and permissions",
                         "write_failed") from exc
    return path


def encode_image(rgb_uint8: np.ndarray, alpha: np.ndarray | None = None, *, format: str = "png", quality: int = 95,
                 metadata: dict | None = None, name: str = "image") -> bytes:
    """The bytes of an image file as `save_image` writes it (EXIF/XMP stripped, ICC kept), built in memory.

    `format`: png, webp (both lossless), jpg or tif; `name` names the image in error messages.
    """
    fmt = SAVE_FORMATS.get("." + format.lower().lstrip("."))
    if fmt is None:
        raise ImageError(name, f"cannot encode '{format}' images; use png, jpg, webp or tif", "unsupported_format")
    pixels = _pixels(Path(name), rgb_uint8, alpha, fmt)
    return _encode(pixels, fmt, _save_options(fmt, quality, True, False, metadata or {}, "4:4:4"))


def _encode(pixels: np.ndarray, fmt: str, options: dict) -> bytes:
    if fmt == "PNG" and set(options) <= {"icc_profile"}:  # no metadata to carry: the fast encoder
        return encode_png(pixels, options.get("icc_profile"))
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA" if pixels.shape[2] == 4 else "RGB").save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _pixels(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, fmt: str) -> np.ndarray:
    """The checked pixels to write: HxWx3, or HxWx4 with alpha, uint8 and C-contiguous."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(path, f"expected HxWx3 uint8 pixels, got {rgb.dtype} {rgb.shape}; "
                         "convert tensors with to_uint8 first", "bad_pixels")
    if alpha is None:
        return np.ascontiguousarray(rgb)
    alpha = np.asarray(alpha)
    if alpha.dtype != np.uint8 or alpha.shape != rgb.shape[:2]:
        raise ImageError(path, f"alpha must be HxW uint8 matching the image {rgb.shape[:2]}, "
                         f"got {alpha.dtype} {alpha.shape}", "bad_pixels")
    if fmt == "JPEG":
        raise ImageError(path, "JPEG cannot store transparency; save as .png or .webp, "
                         "or drop the alpha channel explicitly (alpha=None)", "jpeg_alpha")
    return np.dstack([rgb, alpha])


def _save_options(fmt: str, quality: int, lossless_webp: bool, keep: bool, metadata: dict,
                  jpeg_subsampling: str) -> dict:
    options: dict = {}
    icc = metadata.get("icc_profile")
    if icc and (fmt == "PNG" or bytes(icc[16:20]) == b"RGB "):  # only RGB profiles fit RGB pixels
        options["icc_profile"] = icc
    if keep:
        if metadata.get("exif"):
            options["exif"] = metadata["exif"]
        if metadata.get("xmp") and fmt in ("JPEG", "WEBP", "PNG"):
            options["xmp"] = metadata["xmp"]
    if fmt == "JPEG":
        options.update(quality=int(quality), subsampling=jpeg_subsampling)
    elif fmt == "WEBP":
        options.update(lossless=lossless_webp, quality=int(quality), exact=True)
    elif fmt == "TIFF":
        options.update(compression="tiff_adobe_deflate")
    elif fmt == "PNG" and "xmp" in options:
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        xmp = options.pop("xmp")
        info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else xmp)
        options["pnginfo"] = info
    return options


def _check_destination(path: Path, overwrite: bool, guard: InputGuard) -> None:
    protected = guard.input_at(path)
    if protected is not None:
        raise ImageError(path, f"refusing to write over the input image {protected}; "
                         "choose another output folder or name", "input_overwrite")
    if path.is_dir():
        raise ImageError(path, "is a folder; give a file name to write", "is_folder")
    if path.exists() and not overwrite:
        raise _exists(path)


def _exists(path: Path) -> ImageError:
    return ImageError(path, "already exists; choose another output, or replace it with --overwrite "
                      "(overwrite=True from Python)", "exists")


def prepare_output_folder(folder: str | Path) -> Path:
    """Create `folder` if missing and check that files can be written in it; ImageError naming it otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ImageError(folder, "is a file, not a folder; give an output folder that is new or a folder",
                         "not_a_folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = atomic.new_temp_file(folder)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise ImageError(folder, f"cannot write in this output folder ({exc.strerror or exc}); choose a folder "
                         "you can write to", "not_writable") from None
    return folder


# ---------------------------------------------------------------- batches
