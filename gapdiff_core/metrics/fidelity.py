"""Full-reference fidelity of protected vs clean photos: PSNR and SSIM (Wang et al. 2004), per image, by kornia."""
from __future__ import annotations

import kornia
import torch


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
