"""Differentiable preprocessing simulators on B×3×H×W in [0, 1] (kornia convention).

Each is a pure function with a thin nn.Module twin. Rounding is straight-through. Every simulator returns the shape
it was given (geometry is undone by resizing back), so the training loss sees fixed-size images.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import kornia
import torch
import torch.nn.functional as F

from .differentiable_jpeg import st

RESIZE_FILTERS = ("bilinear", "bicubic")  # Pillow's BILINEAR / BICUBIC, antialiased as Pillow does
Pair = Union[float, Sequence[float]]


def _pair(v: Pair) -> tuple[float, float]:
    if isinstance(v, (int, float)):
        return float(v), float(v)
    a, b = v
    return float(a), float(b)


def gaussian_blur(x: torch.Tensor, sigma: Pair = 2.0, kernel_size: Union[int, Sequence[int]] = 7) -> torch.Tensor:
    """Gaussian blur, reflect (BORDER_REFLECT_101) border. sigma / kernel_size: one value or (y, x)."""
    ky, kx = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    sy, sx = _pair(sigma)
    s = torch.tensor([[sy, sx]], dtype=x.dtype, device=x.device)
    return kornia.filters.gaussian_blur2d(x, (int(ky), int(kx)), s, border_type="reflect")


def opencv_kernel_size(sigma: float) -> int:
    """The kernel size OpenCV derives from sigma for 8-bit images (``cv2.GaussianBlur(img, (0, 0), sigma)``)."""
    return max(1, int(math.floor(float(sigma) * 6 + 1 + 0.5)) | 1)


def gauss(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian blur of ``sigma`` pixels with OpenCV's kernel size for it: the twin of the registry's ``gauss``."""
    return gaussian_blur(x, sigma, opencv_kernel_size(sigma))


def gaussian_noise(x: torch.Tensor, std: float = 0.05, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Add N(0, std²) noise and clip to [0, 1] (gradient passes the clip straight through)."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * std
    return st(x + noise, (x + noise).clamp(0, 1))


def quantize(x: torch.Tensor, levels: int = 64) -> torch.Tensor:
    """floor(x·levels)/levels (clipped to [0, 1]) with a straight-through (identity) gradient."""
    return st(x, (torch.floor(x * levels) / levels).clamp(0, 1))


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize to (H, W) with antialiasing when shrinking (as Pillow's BILINEAR does)."""
    h, w = int(size[0]), int(size[1])
    shrink = h < x.shape[-2] or w < x.shape[-1]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)


def resize_down_up(x: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
    """Bilinear downscale by `scale` (antialiased), then bilinear upscale back to the input size."""
    h, w = x.shape[-2:]
    small = resize_bilinear(x, (max(1, round(h * scale)), max(1, round(w * scale))))
    return resize_bilinear(small, (h, w)).clamp(0, 1)


def store_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 8 bits, as a saved file holds a photo (straight-through gradient)."""
    return st(x, (x.clamp(0, 1) * 255.0).round() / 255.0)


def resize_to(x: torch.Tensor, size: Sequence[int], filter: str = "bilinear") -> torch.Tensor:
    """Resize to (H, W) with Pillow's ``filter`` (bilinear or bicubic), antialiased both ways as Pillow is (torch's
    antialiased kernels are Pillow's: bicubic a = −0.5, support widened by the scale when shrinking)."""
    if filter not in RESIZE_FILTERS:
        raise ValueError(f"resize simulator: filter must be one of {', '.join(RESIZE_FILTERS)}, got {filter!r}")
    h, w = int(size[0]), int(size[1])
    return F.interpolate(x, size=(h, w), mode=filter, align_corners=False, antialias=True)


def rescale(x: torch.Tensor, factor: float = 0.5, filter: str = "bilinear") -> torch.Tensor:
    """Shrink by ``factor`` and enlarge back to the input size with ``filter``, each result stored in 8 bits: the
    twin of the registry's ``rescale:factor,filter=...`` (Pillow ``Image.resize`` twice)."""
    h, w = x.shape[-2:]
    small = store_8bit(resize_to(x, (max(1, round(h * factor)), max(1, round(w * factor))), filter))
    return store_8bit(resize_to(small, (h, w), filter))


def crop_window(h: int, w: int, fraction: float, generator: Optional[torch.Generator] = None
                ) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random window keeping ``fraction`` of each side, drawn as the registry's
    ``crop:fraction,position=random`` draws it (top, then left) from ``generator``."""
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
    return top, left, ch, cw


def crop(x: torch.Tensor, fraction: float = 0.9, generator: Optional[torch.Generator] = None,
         filter: str = "bilinear") -> torch.Tensor:
    """Keep a random window of ``fraction`` of each side (one window for the batch), then resize it back to the
    input size with ``filter`` (as an attacker resizes a cropped photo to the training size)."""
    h, w = x.shape[-2:]
    top, left, ch, cw = crop_window(h, w, fraction, generator)
    return store_8bit(resize_to(x[..., top:top + ch, left:left + cw], (h, w), filter))


def bicubic_upscale_unsharp(
    x: torch.Tensor, scale: float = 0.5, amount: float = 0.5, sigma: float = 1.0
) -> torch.Tensor:
    """Super-resolution STAND-IN, not a learned SR model: downscale by `scale`, bicubic upscale back,
    then unsharp mask (y + amount·(y − blur_sigma(y))). It mimics the smoothing-plus-resharpening
    an SR purifier applies; it carries no learned image prior."""
    h, w = x.shape[-2:]
    small = resize_bilinear(x, (max(1, round(h * scale)), max(1, round(w * scale))))
    up = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
    k = 2 * int(round(2 * sigma)) + 1
    sharp = up + amount * (up - gaussian_blur(up, sigma, k))
    return sharp.clamp(0, 1)


class GaussianBlur(torch.nn.Module):
    def __init__(self, sigma: Pair = 2.0, kernel_size: Union[int, Sequence[int]] = 7):
        super().__init__()
        self.sigma, self.kernel_size = sigma, kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(x, self.sigma, self.kernel_size)


class GaussianNoise(torch.nn.Module):
    def __init__(self, std: float = 0.05):
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return gaussian_noise(x, self.std, generator)


class Quantize(torch.nn.Module):
    def __init__(self, levels: int = 64):
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize(x, self.levels)


class ResizeDownUp(torch.nn.Module):
    def __init__(self, scale: float = 0.5):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_down_up(x, self.scale)


class BicubicUpscaleUnsharp(torch.nn.Module):
    """Module twin of :func:`bicubic_upscale_unsharp` (an SR stand-in, not a learned model)."""

    def __init__(self, scale: float = 0.5, amount: float = 0.5, sigma: float = 1.0):
        super().__init__()
        self.scale, self.amount, self.sigma = scale, amount, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bicubic_upscale_unsharp(x, self.scale, self.amount, self.sigma)
