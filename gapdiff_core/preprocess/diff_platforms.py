"""Differentiable twins of the platform presets and of WebP / AVIF, for training (B×3×H×W in [0, 1], shape kept).

A platform preset is "cap the long side, then JPEG" (the registry's ``platform:NAME`` chains). The twin shrinks the
photo by the platform's factor, runs the differentiable JPEG at the platform's quality, and resizes back to the
input size (as an attacker resizes a downloaded photo to the training size). A training image is small (512 px),
so ``photo_side`` says how large the photo it stands for was when uploaded: the shrink factor is
``side / photo_side`` (never enlarging). Lanczos (Facebook) is simulated by Pillow-style bicubic, the nearest
antialiased kernel torch has.

WebP and AVIF are not simulated as such: they are approximated by the differentiable JPEG at a *distortion-matched*
quality (the JPEG quality whose PSNR to the clean photo equals the codec's, measured on the five sample photos at
512×512, table below). This reproduces how much each codec destroys, not where: pointwise the approximation is no
closer to the real WebP/AVIF output than the clean photo is (see docs/robustness.md, "Training for robustness").
"""
from __future__ import annotations

import numpy as np
import torch

from .differentiable_jpeg import diff_jpeg
from .simulators import resize_to, store_8bit

# name: (long side cap in pixels, Pillow filter simulated, JPEG quality); the numbers of the registry's presets
PLATFORMS: dict[str, tuple[int, str, int]] = {
    "instagram": (1080, "bicubic", 75),
    "facebook": (2048, "bicubic", 75),   # the preset resizes with Lanczos: simulated by bicubic
    "x": (4096, "bicubic", 85),
    "whatsapp": (1600, "bicubic", 60),
}

# codec quality 10, 20, ..., 100 -> JPEG quality of equal PSNR to the clean photo (5 sample photos, 512×512 crops;
# Pillow 12.3 libwebp method 4 / libavif default speed against Pillow's libjpeg 4:2:0)
_CODEC_QUALITIES = np.arange(10, 101, 10)
MATCHED_JPEG_QUALITY: dict[str, np.ndarray] = {
    "webp": np.array([20, 27, 37, 49, 58, 66, 72, 81, 91, 97]),
    "avif": np.array([13, 19, 28, 46, 68, 80, 87, 92, 95, 99]),
}


def matched_jpeg_quality(codec: str, quality: float) -> int:
    """The JPEG quality whose distortion matches ``codec`` (webp or avif) at ``quality`` (0-100), interpolated."""
    if codec not in MATCHED_JPEG_QUALITY:
        raise ValueError(f"codec approximation: unknown codec {codec!r}; known: {', '.join(MATCHED_JPEG_QUALITY)}")
    if not 0 <= float(quality) <= 100:
        raise ValueError(f"codec approximation: {codec} quality must be 0..100, got {quality}")
    return int(round(float(np.interp(float(quality), _CODEC_QUALITIES, MATCHED_JPEG_QUALITY[codec]))))


def codec_as_jpeg(x: torch.Tensor, codec: str = "webp", quality: float = 80) -> torch.Tensor:
    """WebP or AVIF at ``quality`` approximated by the differentiable JPEG at the distortion-matched quality."""
    return diff_jpeg(x, matched_jpeg_quality(codec, quality))


def platform(x: torch.Tensor, name: str = "instagram", photo_side: float = 2048) -> torch.Tensor:
    """The upload pipeline of platform ``name`` on images standing for photos whose long side was ``photo_side``
    pixels: shrink by ``side / photo_side`` with the platform's filter (8-bit), differentiable JPEG at its quality,
    bicubic resize back to the input size (8-bit). ``photo_side`` at most the platform's side: JPEG only."""
    if name not in PLATFORMS:
        raise ValueError(f"platform simulator: unknown platform {name!r}; known: {', '.join(PLATFORMS)}")
    if not float(photo_side) >= 1:
        raise ValueError(f"platform simulator: photo_side must be >= 1 pixel, got {photo_side}")
    side, filter, quality = PLATFORMS[name]
    factor = side / float(photo_side)
    if factor >= 1:
        return diff_jpeg(x, quality)
    h, w = x.shape[-2:]
    small = store_8bit(resize_to(x, (max(1, round(h * factor)), max(1, round(w * factor))), filter))
    return store_8bit(resize_to(diff_jpeg(small, quality), (h, w), "bicubic"))
