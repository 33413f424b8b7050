"""Filters on 8-bit photos: the official test-time blur, noise and quantisation, and the denoisers a purifying
attacker reaches for (Gaussian, median, bilateral, total variation, non-local means)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..io import batch_to_uint8
from .pixels import from_uint8, per_image, quantize_8bit, seeded_generator
from .specs import Param, TransformType


def _gaussian_kernel_fixed_point(n: int, sigma: float, fraction_bits: int = 8) -> np.ndarray:
    """OpenCV's bit-exact 8-bit Gaussian kernel: normalised Gaussian, then rounded to
    `fraction_bits` with error diffusion from the outside in; the centre takes the remainder."""
    if n % 2 == 0 or n < 1:
        raise ValueError(f"image transform: kernel size must be odd, got {n}")
    if sigma <= 0:
        sigma = ((n - 1) * 0.5 - 1) * 0.3 + 0.8
    xs = np.arange(n) - (n - 1) / 2
    k = np.exp(-(xs**2) / (2 * sigma * sigma))
    k /= k.sum()
    one = 1 << fraction_bits
    out = np.zeros(n, dtype=np.int64)
    err = 0.0
    for i in range(n // 2):
        adj = k[i] * one + err
        v = int(math.floor(adj + 0.5))
        err = adj - v
        out[i] = out[n - 1 - i] = v
    out[n // 2] = one - 2 * out[: n // 2].sum()
    return out


def _reflect101_index(n: int, pad: int) -> np.ndarray:
    idx = np.arange(-pad, n + pad)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.abs(idx) % period
    return np.where(idx >= n, period - idx, idx)


def gaussian_blur(x: torch.Tensor, kernel_size: Sequence[int] = (3, 3), sigma_x: float = 0.1,
                  sigma_y: float = 2.0) -> torch.Tensor:
    """cv2.GaussianBlur on 8-bit images, reimplemented: separable fixed-point kernels (8 fraction bits),
    BORDER_REFLECT_101, result rounded half up. kernel_size is (width, height) as in OpenCV.

    Source: the GAP-Diff / Anti-DreamBooth test script's ``cv2.GaussianBlur(img, (3, 3), 0.1, 2.0)``."""
    kw, kh = int(kernel_size[0]), int(kernel_size[1])
    kx = _gaussian_kernel_fixed_point(kw, sigma_x)
    ky = _gaussian_kernel_fixed_point(kh, sigma_y if sigma_y > 0 else sigma_x)
    a = batch_to_uint8(x).astype(np.int64)  # B,H,W,C
    _, h, w, _ = a.shape
    cols = _reflect101_index(w, kw // 2)
    rows = _reflect101_index(h, kh // 2)
    a = a[:, :, cols]
    horiz = sum(kx[i] * a[:, :, i : i + w] for i in range(kw))
    horiz = horiz[:, rows]
    acc = sum(ky[j] * horiz[:, j : j + h] for j in range(kh))
    out = np.clip((acc + (1 << 15)) >> 16, 0, 255).astype(np.uint8)
    return from_uint8(out, x)


def gaussian_noise(x: torch.Tensor, std: float = 0.05, seed: int = 0) -> torch.Tensor:
    """Add N(0, std²) noise on the [0, 1] scale (drawn from ``seed``), clip, round to 8 bits.

    Source: the GAP-Diff / Anti-DreamBooth test-time noise; the Gaussian noising of Hönig et al. (ICLR 2025)."""
    noise = torch.randn(x.shape, generator=seeded_generator(seed), dtype=torch.float32).to(x.device) * float(std)
    return quantize_8bit(quantize_8bit(x) + noise)


def quantize(x: torch.Tensor, levels: int = 64) -> torch.Tensor:
    """floor(x·levels)/levels, stored back as 8-bit.

    Source: the GAP-Diff test script's quantisation."""
    if int(levels) < 2:
        raise ValueError(f"image transform: quantize needs at least 2 levels, got {levels}")
    return quantize_8bit(torch.floor(quantize_8bit(x) * int(levels)) / int(levels))


def identity(x: torch.Tensor) -> torch.Tensor:
    """No transform, but still stored as 8-bit.

    Source: an 8-bit PNG save and load."""
    return quantize_8bit(x)


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise ImportError("this image transform needs OpenCV: pip install 'gapdiff[metrics]' "
                          "(opencv-python-headless)") from e
    return cv2


def gauss(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian blur of standard deviation ``sigma`` pixels (kernel from sigma, OpenCV's rule).

    Source: OpenCV ``cv2.GaussianBlur(img, (0, 0), sigma)``."""
    cv2 = _cv2()
    return per_image(x, lambda a: cv2.GaussianBlur(a, (0, 0), float(sigma)))


def median(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Median filter over a k×k window (k odd).

    Source: OpenCV ``cv2.medianBlur(img, k)``."""
    cv2 = _cv2()
    return per_image(x, lambda a: cv2.medianBlur(np.ascontiguousarray(a), int(k)))


def bilateral(x: torch.Tensor, d: int = 9, sigma_color: float = 75.0, sigma_space: float = 75.0) -> torch.Tensor:
    """Edge-preserving bilateral filter (neighbourhood diameter ``d``, sigmas in grey levels and pixels).

    Source: OpenCV ``cv2.bilateralFilter(img, d, sigma_color, sigma_space)``."""
    cv2 = _cv2()
    return per_image(x, lambda a: cv2.bilateralFilter(np.ascontiguousarray(a), int(d), float(sigma_color),
                                                      float(sigma_space)))


def tv(x: torch.Tensor, weight: float = 0.1) -> torch.Tensor:
    """Total-variation denoising (Chambolle's algorithm) of strength ``weight`` on the [0, 1] scale.

    Source: scikit-image ``restoration.denoise_tv_chambolle(img, weight, channel_axis=-1)``."""
    try:
        from skimage.restoration import denoise_tv_chambolle
    except ImportError as e:
        raise ImportError("image transform tv needs scikit-image: pip install 'gapdiff[metrics]'") from e

    def one(a: np.ndarray) -> np.ndarray:
        out = denoise_tv_chambolle(a.astype(np.float32) / 255.0, weight=float(weight), channel_axis=-1)
        return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)

    return per_image(x, one)


def nlmeans(x: torch.Tensor, h: float = 10.0, template: int = 7, search: int = 21) -> torch.Tensor:
    """Non-local-means denoising of strength ``h`` (grey levels; the same for colour), ``template`` and ``search``
    window sizes in pixels.

    Source: OpenCV ``cv2.fastNlMeansDenoisingColored(bgr, None, h, h, template, search)``."""
    cv2 = _cv2()

    def one(a: np.ndarray) -> np.ndarray:
        bgr = np.ascontiguousarray(a[..., ::-1])
        out = cv2.fastNlMeansDenoisingColored(bgr, None, float(h), float(h), int(template), int(search))
        return out[..., ::-1]

    return per_image(x, one)


def official_blur(x: torch.Tensor) -> torch.Tensor:
    """The official 3×3 test-time blur (sigmaX 0.1, sigmaY 2.0), bit-exact with OpenCV.

    Source: the GAP-Diff / Anti-DreamBooth test script's ``cv2.GaussianBlur(img, (3, 3), 0.1, 2.0)``."""
    return gaussian_blur(x)


ENTRIES = (
    TransformType("none", identity, (), "no change (8-bit storage only)"),
    TransformType("blur", official_blur, (), "the official 3x3 blur (sigmaX 0.1, sigmaY 2.0)"),
    TransformType("noise", gaussian_noise, (Param("std", float, 0.05, "noise std on [0, 1]", low=0, high=1),),
                  "add Gaussian noise of STD (seeded)", random=True),
    TransformType("quantize", quantize, (Param("levels", int, 64, "grey levels", low=2, high=256),),
                  "keep LEVELS grey levels per channel"),
    TransformType("gauss", gauss, (Param("sigma", float, 1.0, "std in pixels", low=0.01, high=100),),
                  "Gaussian blur of SIGMA pixels (OpenCV)"),
    TransformType("median", median, (Param("k", int, 3, "window size", low=3, high=255, odd=True),),
                  "median filter over a KxK window (OpenCV)"),
    TransformType("bilateral", bilateral, (
        Param("d", int, 9, "neighbourhood diameter", low=1, high=51),
        Param("sigma_color", float, 75.0, "range sigma (grey levels)", low=0.01, high=1000),
        Param("sigma_space", float, 75.0, "space sigma (pixels)", low=0.01, high=1000),
    ), "bilateral filter, edge-preserving smoothing (OpenCV)"),
    TransformType("tv", tv, (Param("weight", float, 0.1, "denoising weight", low=0.0001, high=10),),
                  "total-variation denoising of WEIGHT (scikit-image, Chambolle)"),
    TransformType("nlmeans", nlmeans, (
        Param("h", float, 10.0, "filter strength (grey levels)", low=0.1, high=100),
        Param("template", int, 7, "template window", low=3, high=21, odd=True),
        Param("search", int, 21, "search window", low=3, high=63, odd=True),
    ), "non-local-means denoising of strength H (OpenCV)"),
)
