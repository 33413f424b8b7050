"""Codecs: a Pillow encode/decode round trip per image (JPEG with its chroma subsampling, WebP, AVIF)."""
from __future__ import annotations

import io

import numpy as np
import PIL
import torch
from PIL import Image, features

from .pixels import per_image
from .specs import Param, TransformType

JPEG_DEFAULT_QUALITY = 70  # a bare 'jpeg' transform: the official protocol's setting
SUBSAMPLING = {"444": 0, "422": 1, "420": 2}  # Pillow's codes


def _round_trip(a: np.ndarray, fmt: str, **options) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, **options)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def jpeg(x: torch.Tensor, quality: int = JPEG_DEFAULT_QUALITY, subsampling: str = "420") -> torch.Tensor:
    """JPEG round trip at ``quality`` (1-100) with chroma ``subsampling`` 4:4:4, 4:2:2 or 4:2:0 (the default,
    Pillow's and most platforms').

    Source: libjpeg through Pillow (``Image.save(format="JPEG", quality=, subsampling=)``)."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"image transform: JPEG quality must be 1..100, got {quality}")
    code = SUBSAMPLING[subsampling]
    return per_image(x, lambda a: _round_trip(a, "JPEG", quality=int(quality), subsampling=code))


def webp(x: torch.Tensor, quality: int = 80) -> torch.Tensor:
    """Lossy WebP round trip at ``quality`` (0-100).

    Source: libwebp through Pillow (``Image.save(format="WEBP", quality=)``, default method 4)."""
    _need_codec("webp")
    return per_image(x, lambda a: _round_trip(a, "WEBP", quality=int(quality)))


def avif(x: torch.Tensor, quality: int = 60) -> torch.Tensor:
    """AVIF round trip at ``quality`` (0-100), Pillow's default 4:2:0 subsampling and speed.

    Source: libavif through Pillow (``Image.save(format="AVIF", quality=)``, Pillow >= 11.3)."""
    _need_codec("avif")
    return per_image(x, lambda a: _round_trip(a, "AVIF", quality=int(quality)))


def _need_codec(name: str) -> None:
    if not features.check(name):
        raise RuntimeError(f"image transform {name}: this Pillow ({PIL.__version__}) has no {name.upper()} codec; "
                           f"install a Pillow wheel built with it (pip install -U pillow) or leave {name} out")


QUALITY_1_100 = Param("quality", int, JPEG_DEFAULT_QUALITY, "JPEG quality", low=1, high=100)
SUBSAMPLING_PARAM = Param("subsampling", "choice", "420", "chroma subsampling", choices=tuple(SUBSAMPLING),
                          aliases={"4:4:4": "444", "4:2:2": "422", "4:2:0": "420"})

ENTRIES = (
    TransformType("jpeg", jpeg, (QUALITY_1_100, SUBSAMPLING_PARAM), "JPEG round trip (Pillow/libjpeg)"),
    TransformType("webp", webp, (Param("quality", int, 80, "WebP quality", low=0, high=100),),
                  "lossy WebP round trip (Pillow/libwebp)"),
    TransformType("avif", avif, (Param("quality", int, 60, "AVIF quality", low=0, high=100),),
                  "AVIF round trip (Pillow/libavif)"),
)
