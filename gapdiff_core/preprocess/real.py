"""Real (non-differentiable) test-time transforms for evaluation, as the official protocol applies them.

All take B×3×H×W in [0, 1] and return tensors whose values are exact multiples of 1/255 (8-bit).
"""
from __future__ import annotations

import io
import math
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..io import batch_to_uint8
from ..common.sizes import short_side_size


def from_uint8(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return t.to(device=like.device)


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255.0).round() / 255.0


JPEG_DEFAULT_QUALITY = 70  # a bare 'jpeg' transform


def jpeg(x: torch.Tensor, quality: int = JPEG_DEFAULT_QUALITY) -> torch.Tensor:
    """Pillow (libjpeg) JPEG round trip per image, Pillow's default chroma subsampling (4:2:0)."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"image transform: JPEG quality must be 1..100, got {quality}")
    out = []
    for a in batch_to_uint8(x):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return from_uint8(np.stack(out), x)


def _gaussian_kernel_fixed_point(n: int, sigma: float, fraction_bits: int = 8) -> np.ndarray:
    """OpenCV's bit-exact 8-bit Gaussian kernel: normalised Gaussian, then rounded to
    `fraction_bits` with error diffusion from the outside in; the centre takes the remainder."""
    if n % 2 == 0 or n < 1:
        raise ValueError(f"image transform: kernel size must be odd, got {n}")
    if sigma <= 0:
        sigma = ((n - 1) * 0.5 - 1) * 0.3 + 0.8
    xs = np.arange(n) - (n - 1) / 2
    k = np.exp(-(xs**2) / (2 * sigma * sigma))
    k /= k.sum()
    one = 1 << fraction_bits
    out = np.zeros(n, dtype=np.int64)
    err = 0.0
    for i in range(n // 2):
        adj = k[i] * one + err
        v = int(math.floor(adj + 0.5))
        err = adj - v
        out[i] = out[n - 1 - i] = v
    out[n // 2] = one - 2 * out[: n // 2].sum()
    return out


def _reflect101_index(n: int, pad: int) -> np.ndarray:
    idx = np.arange(-pad, n + pad)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.abs(idx) % period
    return np.where(idx >= n, period - idx, idx)


def gaussian_blur(
    x: torch.Tensor, kernel_size: Sequence[int] = (3, 3), sigma_x: float = 0.1, sigma_y: float = 2.0
) -> torch.Tensor:
    """cv2.GaussianBlur on 8-bit images, reimplemented: separable fixed-point kernels (8 fraction bits),
    BORDER_REFLECT_101, result rounded half up. Official test setting: 3×3, sigmaX 0.1, sigmaY 2.0.
    kernel_size is (width, height) as in OpenCV."""
    kw, kh = int(kernel_size[0]), int(kernel_size[1])
    kx = _gaussian_kernel_fixed_point(kw, sigma_x)
    ky = _gaussian_kernel_fixed_point(kh, sigma_y if sigma_y > 0 else sigma_x)
    a = batch_to_uint8(x).astype(np.int64)  # B,H,W,C
    _, h, w, _ = a.shape
    cols = _reflect101_index(w, kw // 2)
    rows = _reflect101_index(h, kh // 2)
    a = a[:, :, cols]
    horiz = sum(kx[i] * a[:, :, i : i + w] for i in range(kw))
    horiz = horiz[:, rows]
    acc = sum(ky[j] * horiz[:, j : j + h] for j in range(kh))
    out = np.clip((acc + (1 << 15)) >> 16, 0, 255).astype(np.uint8)
    return from_uint8(out, x)


def gaussian_noise(x: torch.Tensor, std: float = 0.05, seed: Optional[int] = 0) -> torch.Tensor:
    """Add N(0, std²) noise on the [0, 1] scale (seeded), clip, round to 8 bits."""
    g = torch.Generator(device="cpu")
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    noise = torch.randn(x.shape, generator=g, dtype=torch.float32).to(x.device) * float(std)
    return quantize_8bit(quantize_8bit(x) + noise)


def quantize(x: torch.Tensor, levels: int = 64) -> torch.Tensor:
    """floor(x·levels)/levels as the official script, stored back as 8-bit."""
    if int(levels) < 2:
        raise ValueError(f"image transform: quantize needs at least 2 levels, got {levels}")
    return quantize_8bit(torch.floor(quantize_8bit(x) * int(levels)) / int(levels))


def resize(x: torch.Tensor, size: Union[int, Sequence[int]] = 256, method: str = "pillow") -> torch.Tensor:
    """Bilinear resize, not scaled back. int: the short side becomes `size` (aspect kept; a square
    512 image becomes 256×256, the official setting); (H, W): exactly that size.
    method 'pillow': Image.BILINEAR (antialiased: a triangle filter widened by the scale);
    'opencv': cv2.INTER_LINEAR semantics (plain 2-tap bilinear, no antialias; within 1 grey level)."""
    h, w = x.shape[-2:]
    if isinstance(size, int):
        th, tw = short_side_size(h, w, size)
    else:
        th, tw = int(size[0]), int(size[1])
    if method == "opencv":
        y = torch.nn.functional.interpolate(quantize_8bit(x), size=(th, tw), mode="bilinear", align_corners=False)
        return quantize_8bit(y)
    if method != "pillow":
        raise ValueError(f"image transform: resize method must be 'pillow' or 'opencv', got {method!r}")
    out = [np.asarray(Image.fromarray(a).resize((tw, th), Image.BILINEAR)) for a in batch_to_uint8(x)]
    return from_uint8(np.stack(out), x)


def identity(x: torch.Tensor) -> torch.Tensor:
    """No transform, but still stored as 8-bit."""
    return quantize_8bit(x)


# name -> (callable, name of its single numeric argument or None, type of that argument)
REAL_TRANSFORMS: dict[str, tuple[Callable, Optional[str], type]] = {
    "none": (identity, None, int),
    "jpeg": (jpeg, "quality", int),
    "blur": (gaussian_blur, None, int),
    "noise": (gaussian_noise, "std", float),
    "quantize": (quantize, "levels", int),
    "resize": (resize, "size", int),
}


def parse_transform(spec: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """'none', 'jpeg:70', 'blur', 'noise:0.05', 'quantize:64', 'resize:256' -> callable on [0, 1] tensors.
    The callable carries `.spec` (normalised text) and `.name`."""
    text = spec.strip().lower()
    name, _, arg = text.partition(":")
    if name not in REAL_TRANSFORMS:
        raise ValueError(
            f"image transform: unknown transform {spec!r}; known: {', '.join(REAL_TRANSFORMS)}"
        )
    fn, param, kind = REAL_TRANSFORMS[name]
    kwargs = {}
    if arg:
        if param is None:
            raise ValueError(f"image transform: transform {name!r} takes no argument, got {spec!r}")
        try:
            value = kind(arg)
        except ValueError:
            raise ValueError(
                f"image transform: bad {param} {arg!r} in {spec!r}; expected {kind.__name__}"
            ) from None
        if name == "jpeg" and not 1 <= value <= 100:
            raise ValueError(f"image transform: JPEG quality must be 1..100 in {spec!r}")
        if name in ("quantize", "resize") and value < (2 if name == "quantize" else 1):
            raise ValueError(f"image transform: {param} too small in {spec!r}")
        if name == "noise" and not value >= 0:
            raise ValueError(f"image transform: noise std must be >= 0 in {spec!r}")
        kwargs[param] = value

    def apply(x: torch.Tensor) -> torch.Tensor:
        return fn(x, **kwargs)

    apply.name = name
    apply.spec = name + (f":{kwargs[param]}" if kwargs else "")
    return apply
