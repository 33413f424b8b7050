"""The amplified-perturbation image: what protection changed, made visible.

``protected - original`` in grey levels, scaled so that ±budget spans the whole 0-255 range around mid-grey:
unchanged pixels are grey (128), a pixel raised by the full budget is white (255), one lowered by it black (0).
"""
from __future__ import annotations

import numpy as np

ROWS = 512  # rows per block: a large photo never exists as a full-size float copy


def amplification(budget: float) -> float:
    """The factor from grey levels of change to grey levels shown (budgets below 1 count as 1)."""
    return 127.5 / max(float(budget), 1.0)


def amplified_perturbation(original, protected, budget: float) -> tuple[np.ndarray, float]:
    """``(image, gain)``: ``round(127.5 + (protected - original) * gain)`` clipped to uint8, ``gain =
    amplification(budget)``. ``original`` and ``protected`` are arrays (or PIL images) of one shape on the 0-255
    scale, uint8 or float; rows (axis 0) are processed in blocks."""
    original, protected = np.asarray(original), np.asarray(protected)
    if original.shape != protected.shape:
        raise ValueError(f"the original is {original.shape} but the protected image is {protected.shape}")
    gain = amplification(budget)
    vis = np.empty(original.shape, np.uint8)
    for rows in row_blocks(len(original)):
        diff = protected[rows].astype(np.float32) - original[rows]
        vis[rows] = np.rint(np.clip(127.5 + diff * gain, 0, 255))
    return vis, gain


def row_blocks(n: int, rows: int = ROWS):
    """Slices of ``rows`` rows covering ``range(n)``."""
    return (slice(i, min(i + rows, n)) for i in range(0, n, rows))
