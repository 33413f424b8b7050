"""Differentiable preprocessing simulators on B×3×H×W in [0, 1] (kornia convention).

Each is a pure function with a thin nn.Module twin. Rounding is straight-through.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import kornia
import torch
import torch.nn.functional as F

from .differentiable_jpeg import st

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
