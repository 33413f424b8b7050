"""Geometry: resize (short or long side, a filter), crop (a fraction, a position) and rescale (down then up)."""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from .pixels import per_image, quantize_8bit, seeded_generator
from .specs import Param, TransformType

FILTERS = {"nearest": Image.NEAREST, "box": Image.BOX, "bilinear": Image.BILINEAR, "hamming": Image.HAMMING,
           "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
OPENCV_LINEAR = "opencv"  # plain 2-tap bilinear without antialiasing (cv2.INTER_LINEAR semantics)
POSITIONS = ("center", "random", "top-left", "top-right", "bottom-left", "bottom-right")


def _scaled(h: int, w: int, size: int, side: str) -> tuple[int, int]:
    """(H, W) with the short (or long) side equal to ``size``, aspect kept (each side at least 1)."""
    ref = min(h, w) if side == "short" else max(h, w)
    return max(1, round(h * size / ref)), max(1, round(w * size / ref))


def _resize_to(x: torch.Tensor, th: int, tw: int, filter: str) -> torch.Tensor:
    if filter == OPENCV_LINEAR:
        y = torch.nn.functional.interpolate(quantize_8bit(x), size=(th, tw), mode="bilinear", align_corners=False)
        return quantize_8bit(y)
    return per_image(x, lambda a: np.asarray(Image.fromarray(a).resize((tw, th), FILTERS[filter])))


def resize(x: torch.Tensor, size: Union[int, Sequence[int]] = 256, filter: str = "bilinear", side: str = "short",
           enlarge: bool = True) -> torch.Tensor:
    """Resize, not scaled back. ``size`` an int: the ``side`` ("short", the official protocol's 512 -> 256, or
    "long", as platforms cap uploads) becomes ``size``, aspect kept; with ``enlarge=False`` a photo already within
    ``size`` is kept as it is. ``size`` (H, W): exactly that size. Filters are Pillow's (antialiased when
    shrinking); "opencv" is cv2.INTER_LINEAR (2-tap bilinear, no antialias).

    Source: Pillow ``Image.resize``; the Anti-DreamBooth / GAP-Diff test-time resize is ``cv2.resize`` with
    INTER_LINEAR (``filter="opencv"``), which the default (Pillow bilinear, antialiased) approximates."""
    h, w = x.shape[-2:]
    if isinstance(size, int):
        if not enlarge and (min(h, w) if side == "short" else max(h, w)) <= size:
            return quantize_8bit(x)
        th, tw = _scaled(h, w, size, side)
    else:
        th, tw = int(size[0]), int(size[1])
    return _resize_to(x, th, tw, filter)


def crop(x: torch.Tensor, fraction: float = 0.9, position: str = "center", seed: int = 0) -> torch.Tensor:
    """Keep ``fraction`` of the height and of the width at ``position`` ("random": drawn from ``seed``, the same
    window for the whole batch).

    Source: a plain array crop, as a user or a platform's aspect-ratio crop would cut a photo."""
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    if position == "random":
        g = seeded_generator(seed)
        top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
    else:
        top = {"center": (h - ch) // 2, "top-left": 0, "top-right": 0}.get(position, h - ch)
        left = {"center": (w - cw) // 2, "top-left": 0, "bottom-left": 0}.get(position, w - cw)
    return quantize_8bit(x[..., top:top + ch, left:left + cw])


def rescale(x: torch.Tensor, factor: float = 0.5, filter: str = "bilinear") -> torch.Tensor:
    """Shrink by ``factor`` then enlarge back to the original size with the same filter (detail lost, size kept).

    Source: Pillow ``Image.resize`` twice, the down-up resize of robustness benchmarks (e.g. WAVES)."""
    h, w = x.shape[-2:]
    small = _resize_to(x, max(1, round(h * factor)), max(1, round(w * factor)), filter)
    return _resize_to(small, h, w, filter)


FILTER_PARAM = Param("filter", "choice", "bilinear", "resampling filter", choices=(*FILTERS, OPENCV_LINEAR))

ENTRIES = (
    TransformType("resize", resize, (
        Param("size", int, 256, "target side in pixels", low=1, high=16384), FILTER_PARAM,
        Param("side", "choice", "short", "which side becomes size", choices=("short", "long")),
        Param("enlarge", bool, True, "also enlarge smaller photos"),
    ), "resize so one side is SIZE (default: the short side, Pillow bilinear; filter=opencv is the official code's "
       "cv2 INTER_LINEAR; not scaled back)"),
    TransformType("crop", crop, (
        Param("fraction", float, 0.9, "kept fraction of each side", low=0.05, high=1.0),
        Param("position", "choice", "center", "where the window sits", choices=POSITIONS),
    ), "crop to FRACTION of each side (center, a corner or random)", random=True),
    TransformType("rescale", rescale, (
        Param("factor", float, 0.5, "shrink factor", low=0.01, high=1.0), FILTER_PARAM,
    ), "shrink by FACTOR, then enlarge back to the original size"),
)
