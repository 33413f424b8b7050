"""PhotoGuard encoder attack (Salman et al., "Raising the Cost of Malicious AI-Powered Image Editing", ICML 2023;
settings of MadryLab/photoguard's encoder-attack notebook).

L∞ PGD so that the VAE encoder maps the photo to a target latent: minimise ‖E(x') − z_target‖², random start,
sign steps whose size decays linearly from ``step`` to ``step``/100 over the iterations. Budget 0.06 on [-1, 1] =
7.65 grey levels (7 after 8-bit rounding), step 0.02 on [-1, 1] = 2.55 grey levels, 1000 iterations.

Departures: PhotoGuard immunises against img2img/inpainting editing, not personalisation — it is here because the
GAP-Diff paper compares against it. The target is the latent of a uniform mid-grey image (the notebook uses a
grey test-card image); the encoder's mean (``latent_dist.mode()``) is the attacked representation.
The "diffusion attack" (backprop through 4 inpainting denoising steps, L2) is not implemented.
"""
from __future__ import annotations

import torch

from .base import GREY, IterativeProtection


class PhotoGuard(IterativeProtection):
    name = "photoguard"
    paper = "PhotoGuard encoder attack (Salman et al., ICML 2023): 1000 PGD steps towards a grey image's latent"
    defaults = dict(budget=7.65, step=2.55, iterations=1000, target_grey=0.5, random_start=True)
    tiny = dict(iterations=4)

    def total_steps(self, n: int) -> int:
        return self.settings["iterations"]

    def perturb(self, x0: torch.Tensor) -> torch.Tensor:
        s = self.settings
        with torch.no_grad():
            target = self.surrogate.encode_images(torch.full_like(x0[:1], float(s["target_grey"])), sample=False)
        x_adv = x0.clone()
        if s["random_start"]:
            x_adv = self.project(x0 + (torch.rand_like(x0) * 2 - 1) * self.budget * GREY, x0)
        n = int(s["iterations"])
        for i in range(n):
            step = s["step"] - (s["step"] - s["step"] / 100) * i / n
            x = x_adv.detach().requires_grad_(True)
            with self.timed("encoder", x.shape[0]):
                z = self.surrogate.encode_images(x, sample=False)
                loss = (z - target).pow(2).mean()
                grad, = torch.autograd.grad(loss, x)
            x_adv = self.sign_step(x_adv, x0, grad, step=step, ascend=False)
            self.tick(float(loss.detach()))
        return x_adv

    def schedule_units(self, set_size: int = 4) -> dict[str, float]:
        return {"encoder": self.settings["iterations"] * set_size}
