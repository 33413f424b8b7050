"""The amplified-perturbation image: what protection changed, made visible.

``protected - original`` in grey levels, scaled so that ±budget spans the whole 0-255 range around mid-grey:
unchanged pixels are grey (128), a pixel raised by the full budget is white, one lowered by it black.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

ROWS = 512  # rows per block: a large photo never exists as a full-size float copy


def amplification(budget: Optional[float]) -> float:
    """The factor from grey levels of change to grey levels shown (budgets below 1 count as 1)."""
    return 127.5 / max(float(budget or 0), 1.0)


def amplified_perturbation(original, protected, budget: Optional[float]) -> tuple[np.ndarray, float]:
    """``(image, gain)``: ``round(127.5 + (protected - original) * gain)`` clipped to uint8, ``gain =
    amplification(budget)``. ``original`` and ``protected`` are arrays (or PIL images) of one shape on the 0-255
    scale, uint8 or float; rows (axis 0) are processed in blocks. ``budget=None``: the largest change present."""
    original, protected = np.asarray(original), np.asarray(protected)
    if original.shape != protected.shape:
        raise ValueError(f"the original is {original.shape} but the protected image is {protected.shape}")
    if budget is None:
        budget = max((float(np.abs(protected[r].astype(np.float32) - original[r]).max(initial=0))
                      for r in _blocks(len(original))), default=0.0)
    gain = amplification(budget)
    vis = np.empty(original.shape, np.uint8)
    for rows in _blocks(len(original)):
        diff = protected[rows].astype(np.float32) - original[rows]
        vis[rows] = np.rint(np.clip(127.5 + diff * gain, 0, 255))
    return vis, gain


def _blocks(n: int):
    return (slice(i, min(i + ROWS, n)) for i in range(0, n, ROWS))
