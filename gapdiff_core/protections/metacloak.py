"""MetaCloak (Liu et al., "MetaCloak: Preventing Unauthorized Subject-driven Text-to-image Diffusion-based
Synthesis via Meta-learning", CVPR 2024; liuyixin-louis/MetaCloak ``robust_facecloak/attacks/algs/metacloak.py``
with ``script/methods_config.sh`` and ``script/sub/gen/metacloak.sh``).

A pool of surrogate snapshots plus expectation over transformations: DreamBooth-train a surrogate (UNet + text
encoder, one instance + one class image per step, prior weight 1.0, 200 class images, lr 5e-7) 1000 steps on the
clean photos themselves (the code loads set_A but trains on the clean set_B), keeping its state before the first
step and before every 200th (steps 0, 199, 399, …, 999: 6 states). Then for 4 trials × each snapshot × 100
rounds: a 6-step sign-PGD on the whole set where each gradient goes through a random transformation of the set
(torchvision ``GaussianBlur(kernel_size=7)``, whose σ ~ U[0.1, 2.0], then ``RandomHorizontalFlip(0.5)``), then 2
training steps of that snapshot on the perturbed photos. Budget 11 grey levels (r = 11/255 on 0..255), step r/10
= 1.1 grey levels, no random start. ~14,400 PGD steps per identity.

Saving: the released code truncates the perturbed photo to 8 bits (``astype(np.uint8)``: a floor, half a grey level
darker on average); here the step is rounded and clipped to the budget
(:func:`~gapdiff_core.model.protector.apply_budget`).

Departures: fp32 surrogate weights unless ``reference_numerics="released"`` (the released code loads them in bf16;
see :mod:`.base`).
"""
from __future__ import annotations

import copy

import torch

from ..preprocess.simulators import gaussian_blur
from .base import IterativeProtection


def random_blur_flip(x: torch.Tensor) -> torch.Tensor:
    """MetaCloak's EOT transformation of a batch: Gaussian blur (kernel 7, σ ~ U[0.1, 2.0], torchvision's default
    range) and a horizontal flip with probability 0.5, each drawn once for the whole batch."""
    sigma = float(torch.empty(1).uniform_(0.1, 2.0))
    y = gaussian_blur(x, sigma=sigma, kernel_size=7)
    return y.flip(-1) if bool(torch.rand(1) < 0.5) else y


class MetaCloak(IterativeProtection):
    name = "metacloak"
    paper = ("MetaCloak (Liu et al., CVPR 2024): 6 snapshots of a 1000-step DreamBooth run x 4 trials x 100 "
             "rounds x (6 EOT-PGD + 2 training steps)")
    budget_source = "MetaCloak script/methods_config.sh: r = 11; 11 measured on the GAP-Diff paper's images"
    released_numerics = True
    defaults = dict(budget=11.0, step=1.1, pool_steps=1000, snapshot_every=200, trials=4, rounds=100,
                    pgd_steps=6, train_steps=2, lr=5e-7, train_text_encoder=True, num_class_images=200)
    tiny = dict(pool_steps=2, snapshot_every=2, trials=1, rounds=1, pgd_steps=2, train_steps=1,
                num_class_images=2, class_steps=2)

    def snapshot_steps(self) -> list[int]:
        """Pool-training steps before which the state is kept (``step == 0 or (step + 1) % interval == 0``)."""
        k = int(self.settings["snapshot_every"])
        return [i for i in range(int(self.settings["pool_steps"])) if i == 0 or (i + 1) % k == 0]

    def total_steps(self, n: int) -> int:
        s = self.settings
        return s["pool_steps"] + s["trials"] * len(self.snapshot_steps()) * s["rounds"] * (
            s["pgd_steps"] + s["train_steps"])

    def build_pool(self, clean: torch.Tensor) -> list[dict]:
        """UNet and text-encoder states of one DreamBooth run on the clean photos, at :meth:`snapshot_steps`."""
        s = self.settings
        model = self.clone()
        keep = set(self.snapshot_steps())
        pool, opt = [], None
        for step in range(int(s["pool_steps"])):
            if step in keep:
                pool.append(copy.deepcopy({"unet": model.unet.state_dict(),
                                           "text_encoder": model.text_encoder.state_dict()}))
            opt = self.finetune(model, clean, 1, s["lr"], offset=step, optimizer=opt)
        return pool

    def perturb(self, x0: torch.Tensor) -> torch.Tensor:
        s = self.settings
        pool = self.build_pool(x0)
        model = self.clone()
        x_adv = x0.clone()
        for _ in range(int(s["trials"])):
            for state in pool:
                with self.timed("clone"):
                    model.unet.load_state_dict(state["unet"])
                    model.text_encoder.load_state_dict(state["text_encoder"])
                for _ in range(int(s["rounds"])):
                    x_adv = self.pgd(model, x_adv, x0, s["pgd_steps"], transform=random_blur_flip)
                    self.finetune(model, x_adv, s["train_steps"], s["lr"])
        return x_adv

    def schedule_units(self, set_size: int = 4) -> dict[str, float]:
        s = self.settings
        rounds = s["trials"] * len(self.snapshot_steps()) * s["rounds"]
        return {"clone": 2 + s["trials"] * len(self.snapshot_steps()),
                "train": s["pool_steps"] + rounds * s["train_steps"], "pgd": rounds * s["pgd_steps"] * set_size}
