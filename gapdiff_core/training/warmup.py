"""Surrogate warm-up for the random tiny model: some denoising skill, so its error depends on the image at all."""
from __future__ import annotations

import torch

from ..losses import denoising_error
from ..common.prompts import CLASS_PROMPT


def warm_up_surrogate(surrogate, images01, steps: int = 30, lr: float = 3e-3, batch_size: int = 2, seed: int = 0,
                      sample_latents: bool = False) -> list[float]:
    """Teach the RANDOM tiny surrogate's UNet some denoising (plain diffusion loss on ``images01``) so that its error
    depends on the image at all: a random UNet ends in GroupNorm + conv, so its output scale, and with it the
    denoising error, barely moves with the input. Real surrogates are trained already and never need this.

    ``images01``: the training images, any sequence of 3×H×W tensors in [0, 1] (a tensor, or a dataset that reads
    them on demand). Only the images the steps draw are read, one at a time, and only their VAE latents are kept
    (at most ``steps × batch_size`` of them): memory does not grow with the number of images. Deterministic from
    ``seed`` (global RNG forked), so a resumed run rebuilds the same surrogate. Returns the loss per step.
    """
    s = surrogate
    latents: dict[int, torch.Tensor] = {}

    def latent(i: int) -> torch.Tensor:
        if i not in latents:
            with torch.no_grad():
                latents[i] = s.encode_images(images01[i][None].to(s.device), sample=sample_latents)[0]
        return latents[i]

    emb = s.encode_prompt(CLASS_PROMPT)
    opt = torch.optim.AdamW(s.unet.parameters(), lr=lr)
    identity = _LatentIdentity(s)
    history = []
    s.unet.requires_grad_(True)
    s.unet.train()
    try:
        with torch.random.fork_rng(devices=[s.device] if s.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for _ in range(steps):
                z = torch.stack([latent(i) for i in torch.randint(0, len(images01), (batch_size,)).tolist()])
                z = torch.where(torch.rand(batch_size, 1, 1, 1, device=z.device) < 0.5, z, z.flip(-1))
                loss = denoising_error(identity, z, emb.expand(batch_size, -1, -1)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                history.append(float(loss.detach()))
    finally:
        s.unet.requires_grad_(False)
        s.unet.eval()
    return history


class _LatentIdentity:
    """Surrogate view whose 'images' are already latents (skips the VAE during warm-up)."""

    def __init__(self, surrogate):
        self.s, self.scheduler = surrogate, surrogate.scheduler

    def encode_images(self, z, sample=True):
        return z

    def predict(self, noisy, t, emb):
        return self.s.predict(noisy, t, emb)
