"""Sizes: the short side resized to a target, aspect kept (how fine-tuners and the evaluation scale photos)."""
from __future__ import annotations


def short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """``(height, width)`` with the short side ``size`` and the long side scaled alike (rounded, never below
    ``size``). Each caller resizes with its own filter: that choice is part of each protocol."""
    scale = size / min(h, w)
    return max(size, round(h * scale)), max(size, round(w * scale))
