"""Full-reference fidelity of protected vs clean photos, the one home of PSNR, largest change and SSIM: on
B×C×H×W tensors (per image, by kornia; differentiable) and on 8-bit photos (exact, in blocks of rows, so a large
photo never exists as a float tensor at once)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import numpy as np
import torch

from ..common.visualize import row_blocks


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"psnr/ssim need two B×C×H×W tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (shape [B]); inf where the images are equal."""
    _check_pair(a, b)
    return torch.stack([kornia.metrics.psnr(x.float(), y.float(), data_range) for x, y in zip(a, b)])


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window_size: int = 11) -> torch.Tensor:
    """Structural similarity per image (shape [B]): Gaussian window of `window_size` (σ 1.5), K1 0.01, K2 0.03,
    'valid' filtering as in Wang et al.'s reference code, averaged over channels and positions. Differentiable."""
    _check_pair(a, b)
    if min(a.shape[-2:]) < window_size:
        raise ValueError(f"ssim needs images of at least {window_size}×{window_size}, got {tuple(a.shape[-2:])}")
    s = kornia.metrics.ssim(a.float(), b.float(), window_size, max_val=data_range, padding="valid")
    return s.flatten(1).mean(1)


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    """PSNR in dB of a mean squared error on a 0-`peak` scale; inf for equal images."""
    return float("inf") if mse == 0 else 10 * math.log10(peak ** 2 / mse)


@dataclass
class ChangeStats:
    """How much an 8-bit image was changed: largest change in grey levels and PSNR (dB)."""

    max_change: float
    psnr: float


def change_stats(original: np.ndarray, changed: np.ndarray) -> ChangeStats:
    """Largest change and PSNR between two 8-bit images (uint8 arrays of one shape), exact on every CPU."""
    if original.dtype != np.uint8 or changed.dtype != np.uint8 or original.shape != changed.shape:
        raise ValueError(f"change_stats expects two uint8 arrays of one shape, got {original.dtype} "
                         f"{original.shape} and {changed.dtype} {changed.shape}")
    # int16 copies made in NumPy: a read-only photo (np.asarray of a PIL image) never reaches torch.from_numpy
    diff = torch.from_numpy(changed.astype(np.int16)).sub_(torch.from_numpy(original.astype(np.int16)))
    lo, hi = torch.aminmax(diff)
    # Exact on every CPU: in float64 each squared difference (<= 255^2) and every partial sum (< 2^53 for any photo
    # under 10^11 pixels) is an integer held exactly, so no summation order rounds (a float32 dot product did).
    flat = diff.reshape(-1).double()
    mse = torch.dot(flat, flat).item() / flat.numel()
    return ChangeStats(max_change=float(max(-lo.item(), hi.item())), psnr=psnr_from_mse(mse))


def ssim_uint8(a: np.ndarray, b: np.ndarray, window: int = 11) -> float:
    """:func:`ssim` of two H×W×3 uint8 images, computed in strips of rows so a large photo never exists as a float
    tensor at once; nan below the 11×11 window."""
    h, w = a.shape[:2]
    if min(h, w) < window:
        return float("nan")
    total, count = 0.0, 0
    for start in range(0, h - window + 1, 256):
        stop = min(start + 256, h - window + 1)  # valid output rows [start, stop)
        strip = slice(start, stop + window - 1)
        n = (stop - start) * (w - window + 1)
        total += float(ssim(rgb_tensor(a[strip]), rgb_tensor(b[strip]), window_size=window)[0]) * n
        count += n
    return total / count


def rgb_tensor(rgb: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 -> 1×3×H×W float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None].div_(255)


class DiffStats:
    """Statistics of ``b - a`` (8-bit images) in grey levels, accumulated over blocks of rows: largest change,
    RMS, PSNR, and the cosine similarity of two such differences (:meth:`cross`)."""

    def __init__(self, a: np.ndarray, b: np.ndarray):
        self.a, self.b, self.n = a, b, a.size
        self.max, self.sq = 0.0, 0.0
        for rows in row_blocks(a.shape[0]):
            d = b[rows].astype(np.float64) - a[rows]
            self.max = max(self.max, float(np.abs(d).max(initial=0)))
            self.sq += float(np.vdot(d, d))
        self.rms = math.sqrt(self.sq / self.n)
        self.psnr = psnr_from_mse(self.sq / self.n)

    def cross(self, other: "DiffStats") -> float:
        """Cosine similarity of the two differences (0 when either is zero)."""
        if self.sq == 0 or other.sq == 0:
            return 0.0
        dot = sum(float(np.vdot(self.b[r].astype(np.float64) - self.a[r],
                                 other.b[r].astype(np.float64) - other.a[r])) for r in row_blocks(self.a.shape[0]))
        return dot / math.sqrt(self.sq * other.sq)
