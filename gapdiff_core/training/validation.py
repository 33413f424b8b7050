"""Validation on a fixed batch: adversarial effect before/after REAL JPEG, fidelity, and an image grid."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..io import atomic
from ..losses import VAL_SEED, mean_denoising_error
from ..metrics.fidelity import psnr, ssim
from ..preprocess.codecs import jpeg
from ..preprocess.pixels import quantize_8bit
from ..model.protector import Protector
from ..common.visualize import amplified_perturbation

@torch.no_grad()
def protect_batch(generator, x01: torch.Tensor, budget: float) -> torch.Tensor:
    """The generator's protection of `x01` as users get it (`Protector`: per-image statistics, dropout off, whole
    grey levels within the budget), in fp32 at the images' own size; the generator itself is left untouched."""
    device = next(generator.parameters()).device
    protector = Protector(generator, budget=budget, device=str(device), precision="fp32",
                          working_resolution=min(x01.shape[-2:]), batch_size=len(x01))
    return protector(x01.clamp(0, 1))


def random_sign_noise(x01: torch.Tensor, budget: float, seed: int = VAL_SEED) -> torch.Tensor:
    """The random baseline: ±budget on every pixel (the largest perturbation the same L∞ budget allows)."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, x01.shape, generator=g).float() * 2 - 1
    return quantize_8bit(x01 + sign.to(x01.device) * (budget / 255.0))


def evaluate_generator(generator, surrogate, clean01: torch.Tensor, budget: float, prompt_embeds: torch.Tensor,
                       timesteps: torch.Tensor, jpeg_quality: int = 70, include_random: bool = True,
                       protected: torch.Tensor | None = None, **loss_kwargs) -> dict[str, float]:
    """Adversarial effect (mean denoising error) on clean / protected / protected-then-real-JPEG images, the random
    baseline, the share of the effect that survives JPEG, and PSNR/SSIM of protected vs clean. `protected`: the
    generator's output on `clean01` when the caller has it already."""
    clean01 = clean01.to(surrogate.device)
    protected = protect_batch(generator, clean01, budget) if protected is None else protected.to(surrogate.device)
    err = lambda x: float(mean_denoising_error(surrogate, x, prompt_embeds, timesteps, **loss_kwargs).mean())  # noqa: E731
    out = {"adv_clean": err(clean01), "adv_protected": err(protected)}
    out["adv_clean_jpeg"] = err(jpeg(clean01, jpeg_quality))
    out["adv_protected_jpeg"] = err(jpeg(protected, jpeg_quality))
    if include_random:
        out["adv_random"] = err(random_sign_noise(clean01, budget))
    gain = out["adv_protected"] - out["adv_clean"]
    out["jpeg_survival"] = (out["adv_protected_jpeg"] - out["adv_clean_jpeg"]) / gain if gain > 0 else float("nan")
    out["psnr"] = float(psnr(protected.cpu(), clean01.cpu()).mean())
    out["ssim"] = float(ssim(protected.cpu(), clean01.cpu()).mean())
    out["max_abs_grey"] = float((protected - clean01).abs().max() * 255)
    return out


def save_grid(path: Path, clean01: torch.Tensor, protected01: torch.Tensor, budget: float, max_side: int = 256) -> Path:
    """PNG grid, one column per image: clean / protected / perturbation amplified to the full grey range."""
    clean01, protected01 = clean01.cpu(), protected01.cpu()
    amp, _ = amplified_perturbation(clean01.numpy() * 255, protected01.numpy() * 255, budget)
    rows = [clean01, protected01, torch.from_numpy(amp).float() / 255]
    scale = min(1.0, max_side / clean01.shape[-1])
    if scale < 1:
        rows = [torch.nn.functional.interpolate(r, scale_factor=scale, mode="area") for r in rows]
    grid = torch.cat([torch.cat(list(r.cpu()), dim=-1) for r in rows], dim=-2)
    arr = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic.write_bytes(path, buf.getvalue())


def validation_images(paths, resolution: int, limit: Optional[int] = None) -> torch.Tensor:
    """The fixed validation batch, held in memory as one tensor: at most ``limit`` images (the config's
    ``val_count``, 4 by default; ``split_train_val`` never returns more), so small and bounded."""
    from .data import ImageFolderDataset

    ds = ImageFolderDataset(list(paths)[:limit] if limit else list(paths), resolution)
    return torch.stack([ds[i] for i in range(len(ds))])
