"""The official GAP-Diff JPEG-Mask (adapted there from HiDDeN), reimplemented from its description.

Works in the generator domain [-1, 1]: no quantisation, no chroma subsampling, just a linear low-pass
that keeps the top-left 5×5 DCT coefficients of Y and 3×3 of U and V in every 8×8 block.
"""
from __future__ import annotations

import torch

from .dct import BLOCK, block_dct, block_idct, pad_to_multiple, tile_per_block

# RGB -> YUV without offsets, and the inverse, with the coefficients of the official code.
RGB_TO_YUV = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.1687, -0.3313, 0.5], [0.5, -0.4187, -0.0813]], dtype=torch.float64
)
YUV_TO_RGB = torch.tensor(
    [[1.0, 0.0, 1.40198758], [1.0, -0.344113281, -0.714103821], [1.0, 1.77197812, 0.0]], dtype=torch.float64
)


def _mix(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.einsum("oc,bchw->bohw", m.to(dtype=x.dtype, device=x.device), x)


def coefficient_mask(keep_y: int = 5, keep_c: int = 3, dtype=torch.float32, device=None) -> torch.Tensor:
    """3×8×8 mask: ones on the top-left keep_y×keep_y (Y) and keep_c×keep_c (U, V) coefficients."""
    m = torch.zeros(3, BLOCK, BLOCK, dtype=dtype, device=device)
    m[0, :keep_y, :keep_y] = 1
    m[1:, :keep_c, :keep_c] = 1
    return m


def jpeg_mask(x: torch.Tensor, keep_y: int = 5, keep_c: int = 3) -> torch.Tensor:
    """Official JPEG-Mask on B×3×H×W in [-1, 1] -> B×3×H×W in [-1, 1]; any H, W; differentiable.

    With keep_y = keep_c = 8 nothing is masked and the input comes back (up to float error).
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"JPEG feature masking: expected B×3×H×W, got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    img = (x.clamp(-1, 1) + 1) * 127.5
    img = pad_to_multiple(img, BLOCK, mode="constant")
    yuv = _mix(img, RGB_TO_YUV)
    coef = block_dct(yuv)
    hp, wp = coef.shape[-2:]
    mask = tile_per_block(coefficient_mask(keep_y, keep_c, coef.dtype, coef.device), hp, wp)
    rgb = _mix(block_idct(coef * mask), YUV_TO_RGB)[..., :h, :w]
    return (rgb / 127.5 - 1).clamp(-1, 1)


def jpeg_mask01(x01: torch.Tensor) -> torch.Tensor:
    """JPEG-Mask for pipelines in the [0, 1] convention."""
    return (jpeg_mask(x01 * 2 - 1) + 1) / 2


class JpegMask(torch.nn.Module):
    """Module twin of :func:`jpeg_mask01` ([0, 1] in and out)."""

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return jpeg_mask01(x01)
