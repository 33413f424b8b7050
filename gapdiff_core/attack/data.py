"""The attack's training data: photos at the training size, their VAE latent moments, and the batches of each step,
all drawn from generators seeded by ``(seed, step)`` so that a resumed run sees the same batches."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common import seeds
from ..common.sizes import short_side_size


def load_photos(images, resolution: int, center_crop: bool = True) -> torch.Tensor:
    """Photos (a B×3×H×W [0, 1] tensor, or a list of paths and 1×3×H×W tensors of any sizes) -> B×3×R×R: short
    side resized to R (antialiased bilinear, as torchvision's Resize), then centre-cropped (or resized to R×R with
    ``center_crop=False``)."""
    if isinstance(images, torch.Tensor):
        batch = [images] if images.dim() == 3 else list(images.split(1))
    else:
        from ..io import load_image

        batch = [p if isinstance(p, torch.Tensor) else load_image(p).tensor() for p in images]
    if not batch:
        raise ValueError("no photos to attack with")
    out = []
    for img in batch:
        img = img if img.dim() == 4 else img.unsqueeze(0)
        if img.shape[1] != 3:
            raise ValueError(f"photos must be 3-channel RGB, got shape {tuple(img.shape)}")
        h, w = img.shape[-2:]
        if center_crop:
            nh, nw = short_side_size(h, w, resolution)
            if (nh, nw) != (h, w):
                img = F.interpolate(img.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
            top, left = (nh - resolution) // 2, (nw - resolution) // 2
            img = img[..., top:top + resolution, left:left + resolution]
        elif (h, w) != (resolution, resolution):
            img = F.interpolate(img.float(), size=(resolution, resolution), mode="bilinear", antialias=True,
                                align_corners=False)
        out.append(img.float().clamp(0, 1))
    return torch.cat(out)


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seeds.derive_seed(seeds.STEP, seed, step, salt))


def batch_indices(step: int, batch: int, length: int, seed: int) -> list[int]:
    """Dataset indices of ``step``: an endless stream of per-epoch shuffles (like a shuffling DataLoader)."""
    out = []
    for pos in range(step * batch, step * batch + batch):
        epoch, i = divmod(pos, length)
        perm = torch.randperm(length, generator=step_generator(seed, epoch, salt=17))
        out.append(int(perm[i]))
    return out


@torch.no_grad()
def latent_moments(surrogate, images: torch.Tensor, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior mean and std (unscaled) of each image, on the CPU in fp32."""
    means, stds = [], []
    for chunk in images.split(batch):
        x = (chunk * 2 - 1).to(surrogate.vae.device, surrogate.vae.dtype)
        dist = surrogate.vae.encode(x).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def sample_latents(moments, idx: list[int], g: torch.Generator, scaling: float) -> torch.Tensor:
    """Scaled VAE posterior samples of the images ``idx``, drawn from ``g``."""
    mean, std = moments[0][idx], moments[1][idx]
    return (mean + std * torch.randn(mean.shape, generator=g)) * scaling
