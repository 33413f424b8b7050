"""CAAT (Xu et al., "Perturbing Attention Gives You More Bang for the Buck: Subtle Imaging Perturbations That
Efficiently Fool Customized Diffusion Models", CVPR 2024; settings of CO2-cityao/CAAT and GAP-Diff's benchmark
scripts).

Custom-Diffusion style: only the key/value projections of the cross-attention layers (``attn2.to_k``/``to_v``) are
trainable. For 250 steps, one forward/backward gives both (a) a sign-gradient *ascent* step on the photos that
increases the denoising loss and (b) an AdamW *descent* step on the K/V weights (lr 1e-5). Random horizontal flip
augmentation; prompt "a photo of a person". Budget 0.05 on [-1, 1] = 6.4 grey levels (6 after rounding), step
5e-3 on [-1, 1] = 0.64 grey levels.

Departures: prior preservation only with ``class_images`` (CAAT: optional, 200 class images); fp32, not bf16.
"""
from __future__ import annotations

import torch

from ..losses import dreambooth_loss
from .base import IterativeProtection, resize, with_unet


def cross_attention_kv(unet) -> list[torch.nn.Parameter]:
    """The K/V projection weights of every cross-attention layer (``attn2``)."""
    return [p for n, p in unet.named_parameters() if ".attn2.to_k." in n or ".attn2.to_v." in n]


class CAAT(IterativeProtection):
    name = "caat"
    paper = "CAAT (Xu et al., CVPR 2024): 250 joint steps, image ascent + cross-attention K/V descent (lr 1e-5)"
    prompt = "a photo of a person"
    defaults = dict(budget=6.4, step=0.64, steps=250, lr=1e-5, hflip=True)
    tiny = dict(steps=3)

    def total_steps(self, n: int) -> int:
        return self.settings["steps"]

    def perturb(self, x0: torch.Tensor) -> torch.Tensor:
        s = self.settings
        unet = self.clone_unet()
        unet.requires_grad_(False)
        kv = cross_attention_kv(unet)
        if not kv:
            raise ValueError(f"{self.name}: the surrogate UNet has no cross-attention (attn2) K/V projections")
        for p in kv:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(kv, lr=float(s["lr"]), weight_decay=1e-2)
        view = with_unet(self.surrogate, unet)
        x_adv = x0.clone()
        pw = float(s["prior_weight"])
        cls = cls_emb = None
        if self.class_images is not None and pw > 0:
            cls = resize(self.class_images[:x0.shape[0]].to(x0), tuple(x0.shape[-2:]))
            cls_emb = self.embeds(cls.shape[0], "a photo of person")
        for _ in range(int(s["steps"])):
            x = x_adv.detach().requires_grad_(True)
            with self.timed("train_kv", x.shape[0]):
                flip = torch.rand(x.shape[0], device=x.device) < 0.5 if s["hflip"] else None
                inp = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x) if flip is not None else x
                loss = dreambooth_loss(view, inp, self.embeds(x.shape[0]), cls, cls_emb, prior_weight=pw)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            x_adv = self.sign_step(x_adv, x0, x.grad)
            self.tick(float(loss.detach()))
        return x_adv

    def schedule_units(self, set_size: int = 4) -> dict[str, float]:
        return {"clone": 1, "train_kv": self.settings["steps"] * set_size}
