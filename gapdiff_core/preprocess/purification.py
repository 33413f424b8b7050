"""Purifications through the surrogate diffusion model: DiffPure / SDEdit, GrIDPure and IMPRESS.

Each follows its authors' released code, moved onto the surrogate (a latent diffusion model, where the references
use a pixel-space ImageNet model or SD's VAE); ``docs/methods.md`` lists every departure.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .pixels import quantize_8bit, seeded_generator
from .specs import Param, TransformSpecError, TransformType

SAMPLERS = ("ddpm", "ddim")


# ---------------------------------------------------------------- noise to step t*, denoise with the surrogate
def denoising_timesteps(start: int, steps: int) -> list[int]:
    """Model timesteps from ``start - 1`` down to 0: all of them (``steps`` 0, as DiffPure), else ``steps`` evenly
    spaced ones."""
    if steps <= 0 or steps >= start:
        return list(range(start - 1, -1, -1))
    return sorted({int(t) for t in np.linspace(start - 1, 0, steps).round()}, reverse=True)


def diffuse_and_denoise(surrogate, x: torch.Tensor, start: int, sampler: str, steps: int,
                        generator: torch.Generator) -> torch.Tensor:
    """Encode ``x`` (B×3×H×W in [0, 1]; padded by reflection to the latent grid), noise the latents to step
    ``start`` of the surrogate's schedule, denoise them to step 0 with the empty prompt and ``sampler`` (ancestral
    DDPM with the fixed posterior variance, or deterministic DDIM), decode, crop back."""
    h, w = x.shape[-2:]
    s = surrogate.latent_scale
    x = F.pad(x, (0, -w % s, 0, -h % s), mode="reflect" if min(h, w) > s else "replicate")
    z = surrogate.encode_images(x, sample=False).float()
    abar = surrogate.scheduler.alphas_cumprod.to(device=z.device, dtype=torch.float32)
    noise = lambda: torch.randn(z.shape, generator=generator).to(z.device)  # noqa: E731
    z = abar[start - 1].sqrt() * z + (1 - abar[start - 1]).sqrt() * noise()
    embeds = surrogate.encode_prompt([""] * z.shape[0])
    timesteps = denoising_timesteps(start, steps)
    for i, t in enumerate(timesteps):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a_t, a_p = abar[t], (abar[prev] if prev >= 0 else torch.ones((), device=z.device))
        out = surrogate.predict(z, torch.full((z.shape[0],), t, device=z.device), embeds).float()
        if surrogate.prediction_type == "v_prediction":
            x0, eps = a_t.sqrt() * z - (1 - a_t).sqrt() * out, a_t.sqrt() * out + (1 - a_t).sqrt() * z
        else:
            x0, eps = (z - (1 - a_t).sqrt() * out) / a_t.sqrt(), out
        if sampler == "ddim":
            z = a_p.sqrt() * x0 + (1 - a_p).sqrt() * eps
        else:
            beta = 1 - a_t / a_p
            z = (a_p.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - a_p) * z) / (1 - a_t)
            if prev >= 0:
                z = z + (beta * (1 - a_p) / (1 - a_t)).sqrt() * noise()
    return surrogate.decode_latents(z).to(device=x.device, dtype=torch.float32)[..., :h, :w]


def _start_step(surrogate, t: float) -> int:
    return int(round(float(t) * surrogate.scheduler.config.num_train_timesteps))


def diffpure(x: torch.Tensor, t: float = 0.1, sampler: str = "ddpm", steps: int = 0, seed: int = 0,
             surrogate=None) -> torch.Tensor:
    """DiffPure / SDEdit: noise the photo to t* = ``t`` × the schedule length, then denoise it back with the
    surrogate (``sampler`` ddpm over every step, as the reference, or ``steps`` of it / ddim). ``t`` 0 returns the
    photo unchanged.

    Source: Nie et al., ICML 2022, github.com/NVlabs/DiffPure (``image_editing_sample`` of its guided-diffusion
    runner, as GrIDPure's copy of it)."""
    start = _start_step(surrogate, t)
    if start == 0:
        return x
    return diffuse_and_denoise(surrogate, x, start, sampler, steps, seeded_generator(seed))


# ---------------------------------------------------------------- GrIDPure
def grid_boxes(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the overlapping tiles: every ``stride`` pixels and one flush with the far
    edge, on each axis; a side shorter than ``crop`` is one tile."""
    def starts(n: int, c: int) -> list[int]:
        out = list(range(0, n - c + 1, stride))
        return out if out[-1] == n - c else out + [n - c]

    ch, cw = min(crop, h), min(crop, w)
    return [(top, left, ch, cw) for top in starts(h, ch) for left in starts(w, cw)]


def grid_purify(x: torch.Tensor, purify: Callable[[torch.Tensor], torch.Tensor], crop: int, stride: int,
                iterations: int, gamma: float) -> torch.Tensor:
    """GrIDPure's loop: purify the grid tiles and a mosaic of the four corners (half a tile each) in one batch,
    average the overlaps (a side of one pixel gets no corner mosaic), blend ``gamma`` of the iteration's input back in, store as 8-bit; ``iterations`` times."""
    b, _, h, w = x.shape
    boxes = grid_boxes(h, w, crop, stride)
    ch, cw = boxes[0][2], boxes[0][3]
    hh, hw = ch // 2, cw // 2
    corners = [(0, 0), (0, w - hw), (h - hh, 0), (h - hh, w - hw)]  # into the mosaic at (0,0), (0,hw), (hh,0), (hh,hw)
    for _ in range(iterations):
        tiles = [x[..., t:t + ch, l:l + cw] for t, l, _, _ in boxes]
        mosaic = torch.cat([torch.cat([x[..., t:t + hh, l:l + hw] for t, l in corners[r:r + 2]], dim=-1)
                            for r in (0, 2)], dim=-2)
        out = purify(torch.cat(tiles)).to(x).split(b)
        mosaic = purify(mosaic).to(x)
        total, count = torch.zeros_like(x), torch.zeros_like(x)
        for (t, l, _, _), tile in zip(boxes, out):
            total[..., t:t + ch, l:l + cw] += tile
            count[..., t:t + ch, l:l + cw] += 1
        for i, (t, l) in enumerate(corners):
            mt, ml = (i // 2) * hh, (i % 2) * hw
            total[..., t:t + hh, l:l + hw] += mosaic[..., mt:mt + hh, ml:ml + hw]
            count[..., t:t + hh, l:l + hw] += 1
        x = quantize_8bit((1 - gamma) * total / count + gamma * x)
    return x


def gridpure(x: torch.Tensor, t: float = 0.01, iterations: int = 20, crop: int = 256, stride: int = 128,
             gamma: float = 0.1, sampler: str = "ddpm", seed: int = 0, surrogate=None) -> torch.Tensor:
    """GrIDPure: DiffPure at ``t`` on ``crop``-pixel tiles every ``stride`` pixels plus a corner mosaic, overlaps
    averaged, ``gamma`` of the input blended back, iterated ``iterations`` times (defaults: the authors' README,
    10 of 1000 steps × 20 iterations, γ 0.1, 256-pixel tiles every 128).

    Source: Zhao et al., CVPR 2024, github.com/ZhengyueZhao/GrIDPure (``gridpure.py``)."""
    start = _start_step(surrogate, t)
    if start == 0:
        return x
    g = seeded_generator(seed)
    return grid_purify(x, lambda tiles: diffuse_and_denoise(surrogate, tiles, start, sampler, 0, g),
                       crop, stride, iterations, gamma)


def _check_grid(params: dict, spec: str) -> None:
    if params["stride"] > params["crop"]:
        raise TransformSpecError(spec, f"stride {params['stride']} is larger than crop {params['crop']}: "
                                       "the tiles would leave gaps")


# ---------------------------------------------------------------- IMPRESS
def consistency_loss(vae, x: torch.Tensor) -> torch.Tensor:
    """Per-image ‖D(E(x)) − x‖² (mean over pixels) on the [-1, 1] scale, through the posterior mode, as IMPRESS's
    ``criterion(model(X_p).sample, X_p)``; ``x`` in [-1, 1]."""
    p = next(vae.parameters())
    rec = vae.decode(vae.encode(x.to(p.dtype)).latent_dist.mode()).sample.float()
    return (rec - x.float()).pow(2).flatten(1).mean(1)


def impress(x: torch.Tensor, steps: int = 100, lr: float = 0.01, weight: float = 0.1, eps: float = 0.1,
            noise: float = 0.1, seed: int = 0, surrogate=None) -> torch.Tensor:
    """IMPRESS: from the photo plus N(0, ``noise``²), Adam (lr ``lr``, cosine-annealed to 1e-5 over ``steps``)
    minimises the autoencoder inconsistency ‖D(E(x′)) − x′‖² + ``weight`` · max(d(x′, x) − ``eps``, 0), clamping
    x′ to the pixel range after each step. d is the RMS distance on [-1, 1] (LPIPS in the reference: its weights
    are not available offline). Each photo is optimised on its own (the loss is a sum over the batch).

    Source: Cao et al., NeurIPS 2023, github.com/AAAAAAsuka/Impress (``impress.py``; defaults of its face script
    ``pg_mask_pur_helen.py``)."""
    vae = surrogate.vae
    device = next(vae.parameters()).device
    target = (x * 2 - 1).to(device)
    start = target + torch.randn(x.shape, generator=seeded_generator(seed)).to(device) * float(noise)
    xp = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([xp], lr=float(lr), eps=1e-5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, int(steps), eta_min=1e-5)
    with torch.enable_grad():
        for _ in range(int(steps)):
            distance = ((xp - target).pow(2).flatten(1).mean(1) + 1e-12).sqrt()
            loss = (consistency_loss(vae, xp) + float(weight) * (distance - float(eps)).clamp(min=0)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            with torch.no_grad():
                xp.clamp_(-1, 1)
    return ((xp.detach() + 1) / 2).clamp(0, 1).to(x.device)


T_PARAM = Param("t", float, 0.1, "noise level t* as a fraction of the schedule", low=0.0, high=1.0)
SAMPLER_PARAM = Param("sampler", "choice", "ddpm", "denoising sampler", choices=SAMPLERS)

ENTRIES = (
    TransformType("diffpure", diffpure, (
        T_PARAM, SAMPLER_PARAM, Param("steps", int, 0, "denoising steps (0: every step from t*)", low=0, high=1000),
    ), "DiffPure/SDEdit: noise to T*, denoise with the surrogate", random=True, needs_surrogate=True),
    TransformType("gridpure", gridpure, (
        Param("t", float, 0.01, "noise level per pass (fraction of the schedule)", low=0.0, high=1.0),
        Param("iterations", int, 20, "purification passes", low=1, high=1000),
        Param("crop", int, 256, "tile size in pixels", low=16, high=4096),
        Param("stride", int, 128, "tile stride in pixels", low=1, high=4096),
        Param("gamma", float, 0.1, "share of the input blended back", low=0.0, high=1.0),
        SAMPLER_PARAM,
    ), "GrIDPure: iterated DiffPure on overlapping tiles", random=True, needs_surrogate=True, check=_check_grid),
    TransformType("impress", impress, (
        Param("steps", int, 100, "optimisation steps", low=1, high=100000),
        Param("lr", float, 0.01, "Adam learning rate", low=1e-6, high=1.0),
        Param("weight", float, 0.1, "weight of the closeness term", low=0.0, high=1e6),
        Param("eps", float, 0.1, "closeness allowed for free (RMS on [-1, 1])", low=0.0, high=2.0),
        Param("noise", float, 0.1, "std of the starting noise on [-1, 1]", low=0.0, high=2.0),
    ), "IMPRESS: optimise the photo to be consistent under the autoencoder", random=True, needs_surrogate=True),
)
