"""8-bit helpers shared by the real transforms: every transform's output is a photo as a file would hold it."""
from __future__ import annotations

import numpy as np
import torch

from ..io import batch_to_uint8


def from_uint8(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """B×H×W×3 uint8 -> float32 B×3×H×W in [0, 1] on ``like``'s device."""
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return t.to(device=like.device)


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the nearest of the 256 grey levels."""
    return (x.clamp(0, 1) * 255.0).round() / 255.0


def per_image(x: torch.Tensor, fn) -> torch.Tensor:
    """Apply ``fn`` (H×W×3 uint8 -> H'×W'×3 uint8) to every image of the batch; all outputs share one size."""
    return from_uint8(np.stack([fn(a) for a in batch_to_uint8(x)]), x)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: the one source of randomness of a transform."""
    return torch.Generator(device="cpu").manual_seed(int(seed))
