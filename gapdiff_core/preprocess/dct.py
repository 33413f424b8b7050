"""Blockwise orthonormal 8×8 DCT-II on B×C×H×W tensors (vectorised, differentiable)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BLOCK = 8


def dct_matrix(n: int = BLOCK, dtype=torch.float32, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix C (n×n): row 0 is sqrt(1/n), row i is sqrt(2/n)·cos(π·i·(2j+1)/(2n))."""
    i = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    c = math.sqrt(2.0 / n) * torch.cos(math.pi * i * (2 * j + 1) / (2 * n))
    c[0] = math.sqrt(1.0 / n)
    return c.to(dtype=dtype, device=device)


def _check_blocks(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[-2] % BLOCK or x.shape[-1] % BLOCK:
        raise ValueError(
            f"block DCT: expected B×C×H×W with H, W multiples of {BLOCK}, got {tuple(x.shape)}"
        )


def block_dct(x: torch.Tensor) -> torch.Tensor:
    """DCT of every 8×8 tile (C·X·Cᵀ); the output keeps the layout: tile (r, c) holds that block's coefficients."""
    return _per_block("ij,bcpjqk,lk->bcpiql", x)


def block_idct(coef: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`block_dct` (Cᵀ·Y·C per 8×8 tile)."""
    return _per_block("ji,bcpjqk,kl->bcpiql", coef)


def _per_block(equation: str, x: torch.Tensor) -> torch.Tensor:
    """`equation` (DCT matrix, tiles, DCT matrix) applied to every 8×8 tile of B×C×H×W `x`, layout kept."""
    _check_blocks(x)
    b, ch, h, w = x.shape
    d = dct_matrix(dtype=x.dtype, device=x.device)
    t = x.reshape(b, ch, h // BLOCK, BLOCK, w // BLOCK, BLOCK)
    return torch.einsum(equation, d, t, d).reshape(b, ch, h, w)


def tile_per_block(table: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Repeat an 8×8 (or B×8×8) table over an H×W plane of blocks -> (…)×H×W."""
    return table.repeat(*([1] * (table.dim() - 2)), h // BLOCK, w // BLOCK)


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "constant") -> torch.Tensor:
    """Pad bottom/right so H and W are multiples of `multiple` ('constant' = zeros, or 'replicate')."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode=mode)
