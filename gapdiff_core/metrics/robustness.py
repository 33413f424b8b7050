"""JPEG robustness of a protection: how much of a photo's perturbation, and of its adversarial effect on a
surrogate, survives the JPEG compression that sharing applies.

Full-resolution data stays in 8 bits and is walked in blocks of rows, so memory follows the photo's byte size.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..common.prompts import INSTANCE_PROMPT
from .fidelity import DiffStats, rgb_tensor

EFFECT_TIMESTEPS = (100, 300, 500, 700, 900)


def jpeg_uint8(rgb: np.ndarray, quality: int) -> np.ndarray:
    """The registry's ``jpeg`` (``preprocess.codecs``) on 8-bit pixels: Pillow's round trip (4:2:0), no float copies."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def denoising_effect(surrogate, x01: torch.Tensor, timesteps=EFFECT_TIMESTEPS, seed: int = 0) -> float:
    """The surrogate's mean denoising error on `x01` (the training objective of `gapdiff_core.losses`, uniform
    weighting) over fixed timesteps with seeded noise, so clean and protected photos are compared on the same
    draws. Higher means the model learns these photos worse."""
    from ..losses import mean_denoising_error

    res = surrogate.resolution
    x = torch.nn.functional.interpolate(x01.float(), (res, res), mode="bilinear", antialias=True,
                                        align_corners=False).to(surrogate.device, surrogate.dtype)
    with torch.no_grad():
        emb = surrogate.encode_prompt([INSTANCE_PROMPT])
    values = [mean_denoising_error(surrogate, x, emb, torch.tensor([t]), seed=seed + i).mean().item()
              for i, t in enumerate(timesteps)]
    return sum(values) / len(values)


@dataclass
class AdversarialEffect:
    """Denoising errors (:func:`denoising_effect`) of the clean and protected photo, before and after JPEG."""

    clean: float
    protected: float
    clean_jpeg: float
    protected_jpeg: float

    @property
    def before(self) -> float:
        return self.protected - self.clean

    @property
    def after(self) -> float:
        return self.protected_jpeg - self.clean_jpeg

    @property
    def share(self) -> float:
        """The share of the effect that survives JPEG (nan without an effect before it)."""
        return self.after / self.before if self.before > 0 else float("nan")


@dataclass
class JpegRobustness:
    """What survives JPEG at ``quality``: the compressed photos, the change before and after, the share of the
    perturbation's energy kept, its correlation with the original perturbation, and the adversarial effect."""

    quality: int
    clean_jpeg: np.ndarray
    protected_jpeg: np.ndarray
    before: DiffStats
    after: DiffStats
    energy_kept: float
    correlation: float
    effect: Optional[AdversarialEffect] = None


def jpeg_robustness(clean: np.ndarray, protected: np.ndarray, quality: int, surrogate=None) -> JpegRobustness:
    """Compress the clean and the protected photo (H×W×3 uint8, same shape) the same way at ``quality`` and
    measure what survives; with a ``surrogate``, also the adversarial effect."""
    if clean.shape != protected.shape:
        raise ValueError(f"the protected photo is {protected.shape[1]}×{protected.shape[0]} but the clean one is "
                         f"{clean.shape[1]}×{clean.shape[0]}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be 1..100, not {quality}")
    jc, jp = jpeg_uint8(clean, int(quality)), jpeg_uint8(protected, int(quality))
    before, after = DiffStats(clean, protected), DiffStats(jc, jp)
    kept = math.sqrt(after.sq) / max(math.sqrt(before.sq), 1e-12)
    effect = None
    if surrogate is not None:
        effect = AdversarialEffect(*(denoising_effect(surrogate, rgb_tensor(v)) for v in (clean, protected, jc, jp)))
    return JpegRobustness(int(quality), jc, jp, before, after, kept, before.cross(after), effect)
