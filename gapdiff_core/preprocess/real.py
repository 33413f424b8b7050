"""The evaluation transforms under their former names; the registry (``preprocess.transforms``) holds them now.

``parse_transform`` is ``transforms.parse``; the functions live in ``filters``, ``codecs`` and ``geometry``.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

from .codecs import JPEG_DEFAULT_QUALITY, jpeg
from .filters import gaussian_blur, gaussian_noise, identity, quantize
from .geometry import OPENCV_LINEAR
from .geometry import resize as _resize
from .pixels import from_uint8, quantize_8bit
from .transforms import parse as parse_transform

__all__ = ["JPEG_DEFAULT_QUALITY", "jpeg", "gaussian_blur", "gaussian_noise", "identity", "quantize", "resize",
           "from_uint8", "quantize_8bit", "parse_transform"]


def resize(x: torch.Tensor, size: Union[int, Sequence[int]] = 256, method: str = "pillow") -> torch.Tensor:
    """Bilinear resize of the short side to ``size`` (or to (H, W)); ``method`` "pillow" (antialiased) or
    "opencv" (cv2.INTER_LINEAR semantics): ``geometry.resize`` with filter "bilinear" or "opencv"."""
    if method not in ("pillow", "opencv"):
        raise ValueError(f"image transform: resize method must be 'pillow' or 'opencv', got {method!r}")
    return _resize(x, size, filter="bilinear" if method == "pillow" else OPENCV_LINEAR)
