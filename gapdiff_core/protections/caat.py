"""CAAT (Xu et al., "Perturbing Attention Gives You More Bang for the Buck: Subtle Imaging Perturbations That
Efficiently Fool Customized Diffusion Models", CVPR 2024; CO2-cityao/CAAT ``CAAT.py`` with
``scripts/train_CAAT.sh``).

Custom-Diffusion style: only the key/value projections of the cross-attention layers (``attn2.to_k``/``to_v``) are
trainable. The photos are loaded once with a random horizontal flip (p = 0.5 each, drawn once). Then for 250 steps,
one forward/backward on the whole set gives both (a) a sign-gradient *ascent* step on the photos that increases
the denoising loss and (b) an AdamW *descent* step on the K/V weights (lr 1e-5) with their gradients clipped at
norm 1.0. Prompt "a photo of a person", no prior preservation (``train_CAAT.sh``). Budget 0.05 on [-1, 1] = 6.4
grey levels (6 after rounding), step 5e-3 on [-1, 1] = 0.64 grey levels.

Departures: the perturbation of a flipped photo is flipped back and added to the photo as given (the released code
saves the flipped photo); fp32, not bf16. The repository's prior-preservation script is not offered: with it, its
loop splits the batch of perturbed photos in two halves and scores the second half as "class" images.
"""
from __future__ import annotations

import torch

from ..losses import denoising_error
from ..common.prompts import CAAT_PROMPT
from .base import IterativeProtection, with_models


def cross_attention_kv(unet) -> list[torch.nn.Parameter]:
    """The K/V projection weights of every cross-attention layer (``attn2``)."""
    return [p for n, p in unet.named_parameters() if ".attn2.to_k." in n or ".attn2.to_v." in n]


class CAAT(IterativeProtection):
    name = "caat"
    paper = "CAAT (Xu et al., CVPR 2024): 250 joint steps, image ascent + cross-attention K/V descent (lr 1e-5)"
    budget_source = "CAAT scripts/train_CAAT.sh: 0.05 on [-1, 1]"
    prompt = CAAT_PROMPT
    defaults = dict(budget=6.4, step=0.64, steps=250, lr=1e-5, hflip=True)
    tiny = dict(steps=3)

    def total_steps(self, n: int) -> int:
        return self.settings["steps"]

    def perturb(self, x0: torch.Tensor) -> torch.Tensor:
        s = self.settings
        unet = self.clone().unet
        unet.requires_grad_(False)
        kv = cross_attention_kv(unet)
        if not kv:
            raise ValueError(f"{self.name}: the surrogate UNet has no cross-attention (attn2) K/V projections")
        for p in kv:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(kv, lr=float(s["lr"]), weight_decay=1e-2)
        view = with_models(self.surrogate, unet)
        flip = (torch.rand(x0.shape[0]) < 0.5).to(x0.device).view(-1, 1, 1, 1) if s["hflip"] else None
        flipped = (lambda x: torch.where(flip, x.flip(-1), x)) if flip is not None else (lambda x: x)
        x0f = flipped(x0)
        x_adv = x0f.clone()
        emb = self.embeds(x0.shape[0])
        for _ in range(int(s["steps"])):
            x = x_adv.detach().requires_grad_(True)
            with self.timed("train_kv", x.shape[0]):
                loss = denoising_error(view, x, emb).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(kv, 1.0)
                opt.step()
            x_adv = self.sign_step(x_adv, x0f, x.grad)
            self.tick(float(loss.detach()))
        return flipped(x_adv)  # a flip is its own inverse

    def schedule_units(self, set_size: int = 4) -> dict[str, float]:
        return {"clone": 1, "train_kv": self.settings["steps"] * set_size}
