"""Input conversion shared by the metrics: tensors or arrays in, uint8 RGB arrays out."""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

from ..io import batch_to_uint8

ImageBatch = Union[torch.Tensor, np.ndarray, Sequence]


def _one_to_uint8(img) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu()
        if img.ndim != 3 or img.shape[0] not in (1, 3):
            raise ValueError(f"expected a 3×H×W tensor in [0, 1], got shape {tuple(img.shape)}")
        img = batch_to_uint8(img.expand(3, -1, -1)[None])[0]
    elif hasattr(img, "convert") and hasattr(img, "size"):  # PIL image
        img = np.asarray(img.convert("RGB"))
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected an H×W×3 image array, got shape {img.shape}")
    img = img[:, :, :3]
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating) and img.max(initial=0) <= 1.0:
            img = np.clip(img * 255.0, 0, 255).round()
        img = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def to_uint8_rgb(images: ImageBatch) -> list[np.ndarray]:
    """B×3×H×W float tensor in [0, 1], or a list of H×W×3 uint8 arrays / 3×H×W tensors / PIL
    images -> list of contiguous H×W×3 uint8 RGB arrays."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4:
            raise ValueError(f"expected a B×3×H×W tensor, got shape {tuple(images.shape)}")
        return [_one_to_uint8(x) for x in images]
    if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[2] in (3, 4):
        return [_one_to_uint8(images)]
    return [_one_to_uint8(x) for x in images]
