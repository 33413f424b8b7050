"""PhotoGuard encoder attack (Salman et al., "Raising the Cost of Malicious AI-Powered Image Editing", ICML 2023;
MadryLab/photoguard ``notebooks/demo_simple_attack_img2img.ipynb``).

L∞ PGD that minimises the norm of the VAE encoder's posterior mean, ‖E(x')‖, i.e. pulls the photo's latent towards
a zero latent: random start, sign steps whose size decays linearly from ``step`` to ``step``/100 over the
iterations. Budget 0.06 on [-1, 1] = 7.65 grey levels (7 after 8-bit rounding), step 0.02 on [-1, 1] = 2.55 grey
levels, 1000 iterations. (Sign steps make ‖·‖ and ‖·‖² the same attack.)

Departures: PhotoGuard immunises against img2img/inpainting editing, not personalisation — it is here because the
GAP-Diff paper compares against it. The "diffusion attack" (backprop through 4 inpainting denoising steps, L2) is
not implemented.
"""
from __future__ import annotations

import torch

from .base import IterativeProtection


class PhotoGuard(IterativeProtection):
    name = "photoguard"
    paper = "PhotoGuard encoder attack (Salman et al., ICML 2023): 1000 PGD steps pulling the latent towards zero"
    budget_source = "PhotoGuard demo_simple_attack_img2img.ipynb: 0.06 on [-1, 1]"
    defaults = dict(budget=7.65, step=2.55, iterations=1000, random_start=True)
    tiny = dict(iterations=4)

    def total_steps(self, n: int) -> int:
        return self.settings["iterations"]

    def perturb(self, x0: torch.Tensor) -> torch.Tensor:
        s = self.settings
        x_adv = self.random_start(x0) if s["random_start"] else x0.clone()
        n = int(s["iterations"])
        for i in range(n):
            step = s["step"] - (s["step"] - s["step"] / 100) * i / n
            x = x_adv.detach().requires_grad_(True)
            with self.timed("encoder", x.shape[0]):
                loss = self.surrogate.encode_images(x, sample=False).pow(2).sum()
                grad, = torch.autograd.grad(loss, x)
            x_adv = self.sign_step(x_adv, x0, grad, step=step, ascend=False)
            self.tick(float(loss.detach()))
        return x_adv

    def schedule_units(self, set_size: int = 4) -> dict[str, float]:
        return {"encoder": self.settings["iterations"] * set_size}
