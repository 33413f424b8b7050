"""Anti-DreamBooth ASPL and FSMG (Van Le et al., "Anti-DreamBooth: Protecting users from personalized text-to-image
synthesis", ICCV 2023; VinAIResearch/Anti-DreamBooth ``attacks/aspl.py``, ``attacks/fsmg.py`` and their scripts).

ASPL: for each of 50 outer iterations — clone the surrogate (UNet + text encoder) and fine-tune the clone 3
DreamBooth steps on the clean set (set_A), run 6 sign-PGD steps on the whole set (set_B) maximising the denoising
loss under the clone, then fine-tune the main surrogate 3 steps on the *perturbed* set. Each fine-tuning step is
one instance image plus one class image (prior preservation, weight 1.0, 200 class images of "a photo of
person"), surrogate lr 5e-7, gradients clipped at 1.0, AdamW created per call. Budget 0.05 on [-1, 1] = 6.4 grey
levels (6 after 8-bit rounding), step 0.005 = 0.64 grey levels, no random start.
FSMG: DreamBooth-train the surrogate (UNet + text encoder) 1000 steps on set_A — batch 2 instance + 2 class images
(shuffled), lr 5e-7, prior weight 1.0 (the repository's ``train_dreambooth.py`` settings) — then 100 PGD steps on
the whole set against that fixed model.

Departures: fp32 surrogate weights with a real gradient clip unless ``reference_numerics="released"`` (the released
code's pure-bf16 weights and no-op clip, see :mod:`.base`); without a ``reference`` (set_A) the photos themselves are
the clean set.
"""
from __future__ import annotations

import torch

from .base import IterativeProtection


class ASPL(IterativeProtection):
    name = "aspl"
    paper = "Anti-DreamBooth ASPL (Van Le et al., ICCV 2023): 50 x (3 surrogate, 6 PGD, 3 surrogate) steps"
    budget_source = "Anti-DreamBooth scripts/attack_with_aspl.sh: 0.05 on [-1, 1]"
    uses_clean_set = True
    released_numerics = True
    defaults = dict(budget=6.4, step=0.64, iterations=50, surrogate_steps=3, pgd_steps=6, lr=5e-7,
                    train_text_encoder=True, num_class_images=200)
    tiny = dict(iterations=2, surrogate_steps=1, pgd_steps=2, num_class_images=2, class_steps=2)

    def total_steps(self, n: int) -> int:
        s = self.settings
        return s["iterations"] * (2 * s["surrogate_steps"] + s["pgd_steps"])

    def perturb(self, x0: torch.Tensor) -> torch.Tensor:
        s = self.settings
        main = self.clone()
        clean = self.clean_reference(x0)
        x_adv = x0.clone()
        for _ in range(int(s["iterations"])):
            sur = self.clone(main)
            self.finetune(sur, clean, s["surrogate_steps"], s["lr"])
            x_adv = self.attack(sur, x_adv, x0)
            del sur
            self.finetune(main, x_adv, s["surrogate_steps"], s["lr"])
        return x_adv

    def attack(self, model, x_adv: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return self.pgd(model, x_adv, x0, self.settings["pgd_steps"])

    def schedule_units(self, set_size: int = 4) -> dict[str, float]:
        s = self.settings
        return {"clone": s["iterations"] + 1, "train": 2 * s["iterations"] * s["surrogate_steps"],
                "pgd": s["iterations"] * s["pgd_steps"] * set_size}


class FSMG(IterativeProtection):
    name = "fsmg"
    paper = ("Anti-DreamBooth FSMG (Van Le et al., ICCV 2023): 1000 DreamBooth steps (batch 2) on the clean set, "
             "then 100 PGD steps")
    budget_source = "Anti-DreamBooth scripts/attack_with_fsmg.sh: 0.05 on [-1, 1]"
    uses_clean_set = True
    defaults = dict(budget=6.4, step=0.64, finetune_steps=1000, batch_size=2, pgd_steps=100, lr=5e-7,
                    train_text_encoder=True, num_class_images=200)
    tiny = dict(finetune_steps=2, pgd_steps=3, num_class_images=2, class_steps=2)

    def total_steps(self, n: int) -> int:
        return self.settings["finetune_steps"] + self.settings["pgd_steps"]

    def perturb(self, x0: torch.Tensor) -> torch.Tensor:
        s = self.settings
        model = self.clone()
        self.finetune(model, self.clean_reference(x0), s["finetune_steps"], s["lr"], batch=int(s["batch_size"]),
                      order="shuffle")
        return self.pgd(model, x0.clone(), x0, s["pgd_steps"])

    def schedule_units(self, set_size: int = 4) -> dict[str, float]:
        s = self.settings
        return {"clone": 1, "train": s["finetune_steps"] * s["batch_size"], "pgd": s["pgd_steps"] * set_size}
