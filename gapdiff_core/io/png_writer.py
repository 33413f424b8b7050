"""A fast PNG encoder for 8-bit RGB/RGBA photos.

Pillow's encoder tries every PNG filter on every row and compresses on one thread: about 3 s for a 12-megapixel
protected photo. Here the "Sub" filter is applied with NumPy and the rows are deflated in parallel slices joined
into one zlib stream (each slice ends on a sync flush, as pigz does). Deflate is ISA-L's (the ``isal`` package:
about 6x faster than zlib at level 1, and smaller output) where it is installed, else zlib's.
Any PNG decoder reads the result; the pixels round-trip bit-exactly.
"""
from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:
    from isal import isal_zlib as deflate_lib
    MAX_LEVEL = 3  # ISA-L levels are 0-3
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the portable fallback
    deflate_lib = zlib
    MAX_LEVEL = 9

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IDAT_SIZE = 1 << 20


def encode_png(pixels: np.ndarray, icc_profile: bytes | None = None, level: int = 1,
               threads: int | None = None) -> bytes:
    """PNG bytes of an H x W x 3 (RGB) or H x W x 4 (RGBA) uint8 array (``level`` capped at MAX_LEVEL)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"encode_png expects H x W x 3|4 uint8, got {pixels.dtype} {pixels.shape}")
    h, w, c = pixels.shape
    rows = np.ascontiguousarray(pixels).reshape(h, w * c)
    filtered = np.empty((h, w * c + 1), np.uint8)
    filtered[:, 0] = 1  # filter type Sub: each byte minus the byte one pixel to the left
    filtered[:, 1:c + 1] = rows[:, :c]
    np.subtract(rows[:, c:], rows[:, :-c], out=filtered[:, c + 1:])
    data = filtered.reshape(-1)
    threads = threads or min(8, os.cpu_count() or 1)
    slices = np.array_split(data, max(1, min(threads, h // 64 or 1)))

    def deflate(i: int) -> bytes:
        comp = deflate_lib.compressobj(min(level, MAX_LEVEL), zlib.DEFLATED, -15)
        last = i == len(slices) - 1
        return comp.compress(slices[i]) + comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    with ThreadPoolExecutor(len(slices)) as pool:  # both libraries release the GIL while compressing
        parts = list(pool.map(deflate, range(len(slices))))
    adler = 1
    for part in slices:
        adler = zlib.adler32(part, adler)
    stream = b"\x78\x01" + b"".join(parts) + struct.pack(">I", adler)

    out = [SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6 if c == 4 else 2, 0, 0, 0))]
    if icc_profile:
        out.append(_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))
    out += [_chunk(b"IDAT", stream[i:i + _IDAT_SIZE]) for i in range(0, len(stream), _IDAT_SIZE)]
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
