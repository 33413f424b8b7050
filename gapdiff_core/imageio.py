"""Robust image decoding and safe encoding (the only place PIL/NumPy meet the core).

Decoding (`load_image`) refuses what it cannot read honestly: empty, text or
truncated files, tiny images and decompression bombs (checked from the header,
before any pixel is decoded). Everything it had to change to get an 8-bit RGB
image (EXIF orientation, 16-bit reduction, CMYK, palettes, animation) is listed
in `LoadedImage.notes`.

Encoding (`save_image`) is atomic (temp file in the destination folder, fsync,
then rename), never replaces an existing file unless asked, never replaces a
protected input even when asked, and strips EXIF (GPS included), XMP and
comments unless `keep_metadata=True`. The ICC colour profile is kept by default:
it carries no personal data and without it colours shift on wide-gamut photos.
JPEG cannot store transparency, so saving an alpha channel as JPEG raises
instead of silently dropping it.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from . import atomic
from .png_writer import encode_png

DEFAULT_MAX_PIXELS = 150_000_000  # a 100 MP photo passes, a 30000x30000 bomb does not
MIN_SIDE = 16
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
DECODE_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "DIB", "GIF")
UNDECODABLE_PHOTOS = {".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF"}  # phone formats, reported when skipped
NAME_MAX = 255  # bytes in one file name on common file systems
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}

_ORIENTATION_TAG = 0x0112


class ImageError(ValueError):
    """An image could not be read or written: `str(exc)` is "PATH: REASON", naming the file, the problem and the fix.

    `path` names the image (a Path, or the name given for an upload), `reason` is the message without it, and
    `kind` says what went wrong for code that reacts to it (never parse the message):
    reading: not_found, is_folder, empty, not_an_image, unsupported_format, unreadable, pixel_limit (over
    max_pixels), decompression_bomb (over Pillow's own guard), too_small, truncated, corrupt;
    writing: unsupported_format, bad_pixels, jpeg_alpha, is_folder, exists, input_overwrite, no_folder,
    not_a_folder, not_writable, write_failed.
    """

    def __init__(self, path, reason: str, kind: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.kind = path, reason, kind

    def __reduce__(self):  # picklable (process pools, Ray) with its attributes
        return type(self), (self.path, self.reason, self.kind)


@dataclass
class LoadedImage:
    """A decoded image: 8-bit RGB pixels in display orientation, optional alpha, and what was done."""

    path: Path
    rgb: np.ndarray  # H x W x 3 uint8
    alpha: np.ndarray | None  # H x W uint8, as stored in the file
    format: str
    notes: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)  # exif (orientation removed), icc_profile, xmp

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the decoded, oriented image."""
        return self.rgb.shape[1], self.rgb.shape[0]

    def tensor(self) -> torch.Tensor:
        """The RGB pixels as a 1x3xHxW float32 tensor in [0, 1]."""
        return torch.from_numpy(np.ascontiguousarray(self.rgb)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


# ---------------------------------------------------------------- decoding


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, *, data: bytes | None = None) -> LoadedImage:
    """Decode a JPEG/PNG/WebP/TIFF/BMP/GIF file into 8-bit RGB (+ alpha), or raise ImageError.

    With `data`, the image is decoded from those bytes (an upload) and `path` only names it in messages;
    nothing is read from or written to disk. Pillow's own bomb guard (2 x Image.MAX_IMAGE_PIXELS) still
    applies above `max_pixels`; raise `PIL.Image.MAX_IMAGE_PIXELS` to allow larger images.
    """
    path = Path(path)
    if data is None:
        _check_file(path)
    elif not data:
        raise ImageError(path, "is empty (0 bytes); send the image file itself", "empty")
    source = path if data is None else io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            im = Image.open(source, formats=decode_formats())
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"refused as a possible decompression bomb ({exc}); "
                         "if the image is genuine, downscale it first", "decompression_bomb") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(path, *_describe_unreadable(path, data)) from exc
    except OSError as exc:
        raise ImageError(path, f"cannot read the file ({exc})", "unreadable") from exc
    with im:
        fmt = im.format or "unknown"
        _check_dimensions(path, im.size, max_pixels)
        notes: list[str] = []
        try:
            rgb, alpha, orientation, metadata = _decode(im, path, fmt, notes, source)
        except ImageError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError, KeyError, IndexError) as exc:
            raise ImageError(path, f"could not decode the {fmt} image ({type(exc).__name__}: {exc}); "
                             "re-export it as PNG or JPEG", "corrupt") from exc
    if orientation in range(2, 9):
        rgb, alpha = _upright(rgb, orientation), None if alpha is None else _upright(alpha, orientation)
        notes.append(f"EXIF orientation {orientation} applied")
    return LoadedImage(path=path, rgb=rgb, alpha=alpha, format=fmt, notes=notes, metadata=metadata)


def _decode(im: Image.Image, path: Path, fmt: str, notes: list[str], source):
    """Pixels, EXIF orientation and metadata of an opened (not yet loaded) image."""
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        kind = {"TIFF": "multi-page TIFF: first page", "MPO": "multi-picture JPEG: first image"}.get(
            fmt, f"animated {fmt}: first frame")
        notes.append(f"{kind} of {frames} used")
    bit_depth = _png_bit_depth(im) if fmt == "PNG" else 8  # before load(): Pillow drops im.png then
    rgb, alpha = _decode_pixels(im, path, notes, bit_depth, source)
    try:
        exif = im.getexif()  # after decoding: for PNG this may load the file, which must be checked first
        orientation = int(exif.get(_ORIENTATION_TAG, 1) or 1)
        metadata = _metadata_of(im, exif)
    except Exception as exc:  # a damaged EXIF block must not make a good photo unreadable
        notes.append(f"EXIF block unreadable ({type(exc).__name__}); orientation and EXIF ignored")
        orientation, metadata = 1, _metadata_of(im, Image.Exif())
    if im.mode == "CMYK":  # a CMYK profile must not be attached to the RGB pixels
        metadata.pop("icc_profile", None)
    return rgb, alpha, orientation, metadata


def decode_formats() -> tuple[str, ...]:
    """The formats load_image reads: DECODE_FORMATS, plus AVIF where this Pillow has it (11.3+ with libavif)."""
    Image.init()  # register every plugin (WebP, TIFF, AVIF) before restricting formats
    return DECODE_FORMATS + (("AVIF",) if "AVIF" in Image.OPEN else ())


def image_extensions() -> frozenset[str]:
    """File extensions that folder and glob inputs pick up (IMAGE_EXTENSIONS, plus .avif where decodable)."""
    return IMAGE_EXTENSIONS | ({".avif"} if "AVIF" in decode_formats() else set())


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageError(path, "file not found; check the path", "not_found")
    if path.is_dir():
        raise ImageError(path, "is a folder, not an image file; pass the files inside it", "is_folder")
    if path.stat().st_size == 0:
        raise ImageError(path, "file is empty (0 bytes); re-copy or re-export the image", "empty")


def _check_dimensions(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    """Refuse bombs and tiny images using the size declared in the header (nothing decoded yet)."""
    width, height = size
    if width * height > max_pixels:
        raise ImageError(path, f"header declares {width}x{height} = {width * height:,} pixels, over the "
                         f"{max_pixels:,} pixel limit (possible decompression bomb); downscale the image "
                         "or raise max_pixels if it is genuine", "pixel_limit")
    if min(width, height) < MIN_SIDE:
        raise ImageError(path, f"image is {width}x{height} px, smaller than the {MIN_SIDE} px minimum "
                         "side; use a larger photo", "too_small")


def _describe_unreadable(path: Path, data: bytes | None = None) -> tuple[str, str]:
    """(reason, kind) for a file Pillow does not recognise."""
    if data is None:
        with open(path, "rb") as f:
            head = f.read(512)
    else:
        head = data[:512]
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif", b"ftyphevc"):
        what = "AVIF needs Pillow 11.3+ built with libavif; " if head[8:12] == b"avif" else "HEIC is not supported; "
        return what + "convert the photo to JPEG or PNG first", "unsupported_format"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "is a text file, not an image; check that the right file was given", "not_an_image"
        except UnicodeDecodeError:
            pass
    return ("not a recognised image (supported: JPEG, PNG, WebP, TIFF, BMP, GIF); "
            "the file may be damaged or in another format", "not_an_image")


def _metadata_of(im: Image.Image, exif: Image.Exif) -> dict:
    """EXIF (orientation removed: pixels are already upright), ICC profile and XMP, for keep_metadata."""
    metadata: dict = {}
    if len(exif):
        exif = Image.Exif()
        exif.load(im.getexif().tobytes())
        exif.pop(_ORIENTATION_TAG, None)
        metadata["exif"] = exif.tobytes()
    if im.info.get("icc_profile"):
        metadata["icc_profile"] = im.info["icc_profile"]
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if xmp:
        metadata["xmp"] = xmp.encode("utf-8") if isinstance(xmp, str) else bytes(xmp)
    return metadata


def _load_pixels(im: Image.Image, path: Path) -> None:
    """im.load(), refusing truncated files even where a host has set Pillow's global `LOAD_TRUNCATED_IMAGES`
    (which is left alone: other threads of the host read it). Truncation is seen per call: the decoder asked the
    file for more data after its end."""
    watch = _EndWatch(im.fp)
    im.fp = watch
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(path, f"image data is truncated or corrupt ({exc}); "
                         "re-download or re-export the file", "truncated") from exc
    if watch.ran_out:
        raise ImageError(path, "image data is truncated (the file ends inside the image data); "
                         "re-download or re-export the file", "truncated")


class _EndWatch:
    """A file object that notes a read past the end (an empty answer to a read that asked for bytes)."""

    def __init__(self, fp):
        self._fp, self.ran_out = fp, False

    def read(self, size=-1):
        data = self._fp.read(size)
        if size != 0 and not data:
            self.ran_out = True
        return data

    def __getattr__(self, name):
        return getattr(self._fp, name)


def _scale16(a: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 with rounding (65535 -> 255, 32768 -> 128), not clipping."""
    a = np.clip(a.astype(np.int64), 0, 65535)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def _decode_pixels(im: Image.Image, path: Path, notes: list[str], bit_depth: int, source):
    """(rgb, alpha) as uint8 arrays; loads `im` (so truncation is always checked)."""
    mode = im.mode
    tile_args = im.tile[0][3] if len(im.tile) == 1 else None  # load() clears the tile list; [3]: Pillow < 11 too
    _load_pixels(im, path)
    if bit_depth == 16 and mode in ("RGB", "RGBA"):
        return _decode_png16(im, path, notes, tile_args, source)
    if im.format == "TIFF" and mode in ("RGB", "RGBA") and _tiff_bits(im) == 16:
        notes.append("16-bit TIFF reduced to 8 bits (high byte kept)")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(im)
        if mode == "I" and (grey.min() < 0 or grey.max() > 65535):
            notes.append(f"32-bit integer image ({grey.min()}..{grey.max()}) stretched to 8 bits")
            grey = _stretch(grey)
        else:
            notes.append("16-bit image reduced to 8 bits")
            grey = _scale16(grey)
        return _grey_to_rgb(grey), None
    if mode == "F":
        grey = np.asarray(im, dtype=np.float64)
        if np.isfinite(grey).all() and grey.min() >= 0.0 and grey.max() <= 1.0:
            notes.append("floating-point image in [0, 1] converted to 8 bits")
            grey = np.rint(grey * 255.0).astype(np.uint8)
        else:
            notes.append("floating-point image stretched to 8 bits")
            grey = _stretch(np.nan_to_num(grey))
        return _grey_to_rgb(grey), None
    if mode == "CMYK":
        return _cmyk_to_rgb(im, notes), None
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        if mode == "P":
            notes.append("palette image with transparency: alpha channel taken from the palette")
        rgba = np.asarray(im.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
    if mode != "RGB":
        if mode in ("L", "1"):
            notes.append("greyscale image converted to RGB")
        elif mode != "P":
            notes.append(f"{mode} image converted to RGB")
        im = im.convert("RGB")
    return np.asarray(im).copy(), None


def _png_bit_depth(im: Image.Image) -> int:
    rawmode = getattr(getattr(im, "png", None), "im_rawmode", "") or ""
    return 16 if rawmode.endswith(";16B") else 8


def _tiff_bits(im: Image.Image) -> int:
    bits = getattr(im, "tag_v2", {}).get(258, (8,))
    return int(bits[0] if isinstance(bits, tuple) else bits)


def _decode_png16(im: Image.Image, path: Path, notes: list[str], tile_args, source):
    """Round 16-bit RGB(A) PNG samples to 8 bits in NumPy from the full 16-bit values.

    Pillow has no 48-bit mode and keeps only the high byte (a floor). Decoding
    the file again with the little-endian raw mode yields the low bytes (the
    PNG unfiltering is identical), so hi*256+lo is the exact sample.
    """
    high = np.asarray(im)  # already loaded by the caller
    low = None
    if isinstance(tile_args, str) and tile_args.endswith(";16B"):
        try:
            low = _decode_png_variant(path, tile_args[:-1] + "L", source)
        except (ImageError, OSError, ValueError, KeyError):
            low = None
    if low is None or low.shape != high.shape:
        notes.append("16-bit PNG reduced to 8 bits (high byte kept)")
        arr = high
    else:
        notes.append("16-bit PNG reduced to 8 bits")
        arr = _scale16(high.astype(np.int64) * 256 + low)
    if arr.shape[-1] == 4:
        return np.ascontiguousarray(arr[..., :3]), np.ascontiguousarray(arr[..., 3])
    return np.ascontiguousarray(arr), None


def _decode_png_variant(path: Path, rawmode: str, source) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(source, formats=("PNG",))  # header already checked by load_image
    with im:
        if len(im.tile) != 1:
            raise ImageError(path, "unexpected PNG layout", "corrupt")
        name, extents, offset, _ = im.tile[0]
        im.tile = [(name, extents, offset, rawmode)]
        _load_pixels(im, path)
        return np.asarray(im)


def _stretch(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))


def _cmyk_to_rgb(im: Image.Image, notes: list[str]) -> np.ndarray:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            notes.append("CMYK converted to RGB (sRGB) with the embedded ICC profile")
            return np.asarray(out).copy()
        except Exception as exc:  # ImageCms missing, or a broken profile
            notes.append(f"CMYK ICC profile unusable ({type(exc).__name__}); converted without colour management")
    else:
        notes.append("CMYK converted to RGB without colour management (no ICC profile)")
    return np.asarray(im.convert("RGB")).copy()


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """`pixels` (as stored) turned upright for EXIF orientation 1-8, by Pillow's `ImageOps.exif_transpose`."""
    im = Image.fromarray(pixels)
    im.getexif()[_ORIENTATION_TAG] = orientation
    return np.asarray(ImageOps.exif_transpose(im)).copy()


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
    return ImageError(path, "already exists; pass overwrite=True (--overwrite) to replace it", "exists")


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
            problems.append(f"{entry}: no such file or folder")
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
