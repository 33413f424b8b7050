"""MetaCloak (Liu et al., "MetaCloak: Preventing Unauthorized Subject-driven Text-to-image Diffusion-based
Synthesis via Meta-learning", CVPR 2024; settings of liuyixin-louis/MetaCloak).

A pool of surrogate snapshots plus expectation over transformations: DreamBooth-train a surrogate 1000 steps on the
clean photos, snapshotting every 200 steps (6 states). Then for 4 trials × each snapshot × 100 inner rounds: a
6-step sign-PGD on the photos where each gradient goes through a random transformation (Gaussian blur, kernel 7,
and a random horizontal flip), then 2 training steps of that snapshot on the perturbed photos. Budget 11 grey
levels (r = 11/255 on 0..255), step r/10 = 1.1 grey levels, surrogate lr 5e-7. ~14,400 PGD steps per identity.

Departures: the blur σ is drawn uniformly from [0.5, 1.5] per step (our choice; the repository's σ range was not
verified); every trial restarts each snapshot from its stored state; UNet-only fine-tuning, prior preservation
only with ``class_images``, the photos themselves as the clean set, fp32 (MetaCloak: fp16).
"""
from __future__ import annotations

import copy

import torch

from ..preprocess.simulators import gaussian_blur
from .base import IterativeProtection


def random_blur_flip(x: torch.Tensor) -> torch.Tensor:
    """MetaCloak's EOT transformation: Gaussian blur (kernel 7, σ ~ U[0.5, 1.5]) and a random horizontal flip."""
    sigma = float(torch.empty(1).uniform_(0.5, 1.5))
    y = gaussian_blur(x, sigma=sigma, kernel_size=7)
    return y.flip(-1) if bool(torch.rand(1) < 0.5) else y


class MetaCloak(IterativeProtection):
    name = "metacloak"
    paper = ("MetaCloak (Liu et al., CVPR 2024): 6 snapshots of a 1000-step DreamBooth run x 4 trials x 100 "
             "rounds x (6 EOT-PGD + 2 training steps)")
    defaults = dict(budget=11.0, step=1.1, pool_steps=1000, snapshot_every=200, trials=4, rounds=100,
                    pgd_steps=6, train_steps=2, lr=5e-7)
    tiny = dict(pool_steps=2, snapshot_every=2, trials=1, rounds=1, pgd_steps=2, train_steps=1)

    def n_snapshots(self) -> int:
        return self.settings["pool_steps"] // self.settings["snapshot_every"] + 1

    def total_steps(self, n: int) -> int:
        s = self.settings
        return s["pool_steps"] + s["trials"] * self.n_snapshots() * s["rounds"] * (s["pgd_steps"] + s["train_steps"])

    def build_pool(self, clean: torch.Tensor) -> list[dict]:
        """State dicts of the surrogate after 0, k, 2k, … DreamBooth steps on the clean photos."""
        s = self.settings
        unet = self.clone_unet()
        pool = [copy.deepcopy(unet.state_dict())]
        opt = None
        for done in range(0, int(s["pool_steps"]), int(s["snapshot_every"])):
            opt = self.finetune(unet, clean, s["snapshot_every"], s["lr"], optimizer=opt)
            pool.append(copy.deepcopy(unet.state_dict()))
        return pool

    def perturb(self, x0: torch.Tensor) -> torch.Tensor:
        s = self.settings
        pool = self.build_pool(self.clean_reference(x0))
        model = self.clone_unet()
        x_adv = x0.clone()
        for _ in range(int(s["trials"])):
            for state in pool:
                with self.timed("clone"):
                    model.load_state_dict(state)
                for _ in range(int(s["rounds"])):
                    x_adv = self.pgd(model, x_adv, x0, s["pgd_steps"], transform=random_blur_flip)
                    self.finetune(model, x_adv, s["train_steps"], s["lr"])
        return x_adv

    def schedule_units(self, set_size: int = 4) -> dict[str, float]:
        s = self.settings
        rounds = s["trials"] * self.n_snapshots() * s["rounds"]
        return {"clone": 2 + s["trials"] * self.n_snapshots(),
                "train": s["pool_steps"] + rounds * s["train_steps"], "pgd": rounds * s["pgd_steps"] * set_size}
