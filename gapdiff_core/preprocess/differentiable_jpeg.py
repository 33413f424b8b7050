"""Differentiable JPEG that follows libjpeg(-turbo) as Pillow runs it, step by step.

Forward pass = the real codec up to the integer DCT: 8-bit input, JFIF YCbCr with rounding,
edge-replicated padding, 2×2 chroma box averaging with libjpeg's alternating rounding bias
(4:2:0, Pillow's default), IJG quality-scaled tables (baseline, clamped to 1..255), rounding
quantisation, 8-bit IDCT output, libjpeg's "fancy" triangle chroma upsampling with its rounding,
and YCbCr->RGB with rounding and clamping. Every rounding/clamp is straight-through (identity
gradient), so gradients reach the input everywhere. The remaining gap to Pillow comes from the
float DCT here versus libjpeg's integer (islow) DCT.
"""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F

from .dct import BLOCK, block_dct, block_idct, pad_to_multiple, tile_per_block

# IJG / ITU T.81 Annex K base tables, natural (row-major) order.
_BASE_Y = [
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99],
]
_BASE_C = [[17, 18, 24, 47, 99, 99, 99, 99], [18, 21, 26, 66, 99, 99, 99, 99],
           [24, 26, 56, 99, 99, 99, 99, 99], [47, 66, 99, 99, 99, 99, 99, 99]] + [[99] * 8] * 4


def st(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Straight-through: value of y, gradient of x."""
    return x + (y - x).detach()


def st_round(x: torch.Tensor) -> torch.Tensor:
    return st(x, torch.round(x))


def st_clamp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return st(x, x.clamp(lo, hi))


def quality_tensor(quality: Union[float, torch.Tensor], batch: int, device=None) -> torch.Tensor:
    """Quality as a (B,) float tensor of integers in 1..100 (libjpeg takes an integer quality)."""
    q = torch.as_tensor(quality, dtype=torch.float64, device=device).detach().flatten()
    if q.numel() == 1:
        q = q.expand(batch)
    if q.numel() != batch:
        raise ValueError(
            f"differentiable JPEG: quality has {q.numel()} values for a batch of {batch}"
        )
    return q.round().clamp(1, 100)


def quantization_tables(quality: torch.Tensor, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """IJG quality scaling (jpeg_set_quality, force_baseline) -> (B×8×8 luma, B×8×8 chroma)."""
    q = quality.to(torch.float64)
    scale = torch.where(q < 50, torch.floor(5000.0 / q), 200.0 - 2.0 * q)[:, None, None]
    out = []
    for base in (_BASE_Y, _BASE_C):
        t = torch.tensor(base, dtype=torch.float64, device=q.device)
        out.append(torch.floor((t * scale + 50.0) / 100.0).clamp(1, 255).to(dtype))
    return out[0], out[1]


def _rgb_to_ycc(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128.0
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * b + 128.0
    return torch.stack((y, cb, cr), 1)


def _ycc_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    y, cb, cr = ycc.unbind(1)
    cb, cr = cb - 128.0, cr - 128.0
    r = y + st_round(1.402 * cr)
    g = y + st_round(-0.344136286 * cb - 0.714136286 * cr)
    b = y + st_round(1.772 * cb)
    return torch.stack((r, g, b), 1)


def _downsample_h2v2(c: torch.Tensor) -> torch.Tensor:
    """libjpeg h2v2_downsample: (sum of 2×2 + bias) >> 2, bias 1, 2, 1, 2, … along each row."""
    s = F.avg_pool2d(c, 2) * 4.0
    bias = torch.ones(s.shape[-1], dtype=s.dtype, device=s.device)
    bias[1::2] = 2.0
    return st(s / 4.0, torch.floor((s.detach() + bias) / 4.0))


def _upsample_h2v2_fancy(c: torch.Tensor) -> torch.Tensor:
    """libjpeg h2v2_fancy_upsample: triangle (3/4, 1/4) filter both ways, edge replicated, its rounding."""
    up = F.interpolate(c, scale_factor=2.0, mode="bilinear", align_corners=False)
    bias = torch.full((up.shape[-1],), 8.0, dtype=up.dtype, device=up.device)
    bias[1::2] = 7.0
    return st(up, torch.floor((torch.round(up.detach() * 16.0) + bias) / 16.0))


def _code_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Level shift, DCT, quantise/dequantise with a B×8×8 table, IDCT, 8-bit output."""
    h, w = plane.shape[-2:]
    qt = tile_per_block(table, h, w)[:, None]
    coef = block_dct(plane - 128.0)
    coef = st_round(coef / qt) * qt
    return st_clamp(st_round(block_idct(coef) + 128.0), 0.0, 255.0)


def diff_jpeg(x: torch.Tensor, quality: Union[float, torch.Tensor] = 75, subsampling: bool = True) -> torch.Tensor:
    """Differentiable JPEG round trip of B×3×H×W in [0, 1] at `quality` (float or per-sample (B,) tensor).

    subsampling=True is 4:2:0 (Pillow's default); False is 4:4:4.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"differentiable JPEG: expected B×3×H×W in [0, 1], got {tuple(x.shape)}")
    bsz, _, h, w = x.shape
    q = quality_tensor(quality, bsz, x.device)
    qy, qc = quantization_tables(q, x.dtype)
    rgb = st_round(st_clamp(x, 0.0, 1.0) * 255.0)
    ycc = st_round(_rgb_to_ycc(rgb))
    mcu = 2 * BLOCK if subsampling else BLOCK
    ycc = pad_to_multiple(ycc, mcu, mode="replicate")
    y = _code_plane(ycc[:, :1], qy)
    c = ycc[:, 1:]
    if subsampling:
        c = _downsample_h2v2(c)
    c = _code_plane(c, qc)
    if subsampling:
        ch, cw = (h + 1) // 2, (w + 1) // 2
        c = _upsample_h2v2_fancy(c[..., :ch, :cw])
    out = torch.cat((y[..., :h, :w], c[..., :h, :w]), 1)
    return st_clamp(_ycc_to_rgb(out), 0.0, 255.0) / 255.0


class DiffJPEG(torch.nn.Module):
    """Module twin of :func:`diff_jpeg`."""

    def __init__(self, quality: float = 75, subsampling: bool = True):
        super().__init__()
        self.quality, self.subsampling = quality, subsampling

    def forward(self, x: torch.Tensor, quality: Union[float, torch.Tensor, None] = None) -> torch.Tensor:
        return diff_jpeg(x, self.quality if quality is None else quality, self.subsampling)
