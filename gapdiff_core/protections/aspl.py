"""Anti-DreamBooth ASPL and FSMG (Van Le et al., "Anti-DreamBooth: Protecting users from personalized text-to-image
synthesis", ICCV 2023; settings of VinAIResearch/Anti-DreamBooth's scripts and GAP-Diff's benchmark scripts).

ASPL: for each of 50 outer iterations — clone the surrogate and fine-tune the clone 3 DreamBooth steps on the
clean set, run 6 sign-PGD steps on the photos maximising the denoising loss under the clone, then fine-tune the
main surrogate 3 steps on the *perturbed* photos. Budget 0.05 on [-1, 1] = 6.4 grey levels (6 after 8-bit
rounding), step 0.005 = 0.64 grey levels, no random start, surrogate lr 5e-7, AdamW created per call.
FSMG: fine-tune the surrogate 1000 steps on the clean set, then 100 PGD steps against that fixed model.

Departures: only the UNet is fine-tuned (Anti-DB also trains the text encoder); prior preservation runs only when
``class_images`` are given (Anti-DB: 200 generated class images, weight 1.0); without ``reference`` the clean
set is the photos themselves (Anti-DB uses a separate clean set_A); fp32 instead of bf16.
"""
from __future__ import annotations

import torch

from .base import IterativeProtection


class ASPL(IterativeProtection):
    name = "aspl"
    paper = "Anti-DreamBooth ASPL (Van Le et al., ICCV 2023): 50 x (3 surrogate, 6 PGD, 3 surrogate) steps"
    defaults = dict(budget=6.4, step=0.64, iterations=50, surrogate_steps=3, pgd_steps=6, lr=5e-7)
    tiny = dict(iterations=2, surrogate_steps=1, pgd_steps=2)

    def total_steps(self, n: int) -> int:
        s = self.settings
        return s["iterations"] * (2 * s["surrogate_steps"] + s["pgd_steps"])

    def perturb(self, x0: torch.Tensor, x_adv: torch.Tensor | None = None) -> torch.Tensor:
        """`x_adv`: where the attack starts (default: the clean photos)."""
        s = self.settings
        main = self.clone_unet()
        clean = self.clean_reference(x0)
        x_adv = x0.clone() if x_adv is None else x_adv
        for _ in range(int(s["iterations"])):
            clone = self.clone_unet(main)
            self.finetune(clone, clean, s["surrogate_steps"], s["lr"])
            x_adv = self.attack(clone, x_adv, x0)
            del clone
            self.finetune(main, x_adv, s["surrogate_steps"], s["lr"])
        return x_adv

    def attack(self, unet, x_adv: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return self.pgd(unet, x_adv, x0, self.settings["pgd_steps"])

    def schedule_units(self, set_size: int = 4) -> dict[str, float]:
        s = self.settings
        return {"clone": s["iterations"] + 1, "train": 2 * s["iterations"] * s["surrogate_steps"],
                "pgd": s["iterations"] * s["pgd_steps"] * set_size}


class FSMG(IterativeProtection):
    name = "fsmg"
    paper = "Anti-DreamBooth FSMG (Van Le et al., ICCV 2023): 1000 DreamBooth steps on clean, then 100 PGD steps"
    defaults = dict(budget=6.4, step=0.64, finetune_steps=1000, pgd_steps=100, lr=5e-7)
    tiny = dict(finetune_steps=2, pgd_steps=3)

    def total_steps(self, n: int) -> int:
        return self.settings["finetune_steps"] + self.settings["pgd_steps"]

    def perturb(self, x0: torch.Tensor) -> torch.Tensor:
        s = self.settings
        model = self.clone_unet()
        self.finetune(model, self.clean_reference(x0), s["finetune_steps"], s["lr"],
                      optimizer=None)
        return self.pgd(model, x0.clone(), x0, s["pgd_steps"])

    def schedule_units(self, set_size: int = 4) -> dict[str, float]:
        s = self.settings
        return {"clone": 1, "train": s["finetune_steps"], "pgd": s["pgd_steps"] * set_size}
