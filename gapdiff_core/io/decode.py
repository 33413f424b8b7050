"""Robust image decoding (the only place PIL/NumPy meet the core on the way in).

`load_image` refuses what it cannot read honestly: empty, text or truncated files, tiny images and decompression
bombs (checked from the header, before any pixel is decoded). Everything it had to change to get an 8-bit RGB
image (EXIF orientation, 16-bit reduction, CMYK, palettes, animation) is listed in `LoadedImage.notes`.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


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
    """Decode a JPEG/PNG/WebP/TIFF/BMP/GIF (and AVIF: see `decode_formats`) file into 8-bit RGB (+ alpha), or raise
    ImageError.

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


def missing_reason(path: Path) -> str:
    """Why `path`, which does not exist as far as `Path.exists` can tell, cannot be opened: not found, a symbolic
    link that loops or leads nowhere, or a folder on the way that cannot be searched."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link that loops (it leads back to itself); point it at a real file"
        if exc.errno == errno.ENOENT and path.is_symlink():
            return f"is a symbolic link to {os.readlink(path)}, which does not exist; point it at a real file"
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return f"cannot be looked up ({exc.strerror}); check the permissions of its folders"
    return "no such file or folder; check the path"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageError(path, missing_reason(path), "not_found")
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
    return (f"not a recognised image (supported: {supported_formats()}); "
            "the file may be damaged or in another format", "not_an_image")


def supported_formats() -> str:
    """The formats load_image reads, for messages: "JPEG, PNG, WebP, TIFF, BMP, GIF" and AVIF where decodable."""
    return ", ".join({"WEBP": "WebP"}.get(f, f) for f in decode_formats() if f != "DIB")


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
