"""SimAC (Wang et al., "SimAC: A Simple Anti-Customization Method for Protecting Face Privacy against Text-to-Image
Synthesis of Diffusion Models", CVPR 2024; settings of somuchtome/SimAC and GAP-Diff's benchmark scripts).

ASPL with adaptive greedy timestep selection: per photo, start from all T timesteps; in up to 50 rounds draw 5
random remaining timesteps, measure the L1 norm of the image gradient at each, delete a ±20 window around the
weakest and take one PGD step at the strongest, until at most 100 remain; ASPL's PGD then samples t only from
that photo's set. Budget 16/255 on [-1, 1] = 8 grey levels, step 0.64, 50 × (3, 6, 3) schedule.

Departures: the paper's feature-interference loss on the last decoder block is left out — in the released code
it is added as a detached float and contributes no gradient, so SimAC as released is what is implemented here;
the ASPL departures apply (UNet-only fine-tuning, prior only with class images, photos as the clean set).
"""
from __future__ import annotations

import torch

from .aspl import ASPL


class SimAC(ASPL):
    name = "simac"
    paper = "SimAC (Wang et al., CVPR 2024): ASPL + greedy timestep selection (50 rounds x 5 probes, keep <= 100)"
    defaults = dict(ASPL.defaults, budget=8.0, select_rounds=50, probes=5, window=20, keep=100)
    tiny = dict(ASPL.tiny, select_rounds=2, probes=2, keep=900)

    def total_steps(self, n: int) -> int:
        return super().total_steps(n) + n * self.settings["select_rounds"]

    def perturb(self, x0: torch.Tensor) -> torch.Tensor:
        x_adv, self.timestep_sets = self.select_timesteps(x0)
        return super().perturb(x0, x_adv)

    def attack(self, unet, x_adv: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return self.pgd(unet, x_adv, x0, self.settings["pgd_steps"], timestep_sets=self.timestep_sets)

    def select_timesteps(self, x0: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Greedy per-photo pruning of the timestep set (with one PGD step per round at the strongest t)."""
        s = self.settings
        T = self.surrogate.scheduler.config.num_train_timesteps
        unet = self.surrogate.unet
        x_out, sets = [], []
        for i in range(x0.shape[0]):
            xi0 = x0[i:i + 1]
            xi = xi0.clone()
            remaining = torch.arange(T)
            for _ in range(int(s["select_rounds"])):
                if len(remaining) <= s["keep"]:
                    break
                probe = remaining[torch.randperm(len(remaining))[:int(s["probes"])]]
                grads = [self.denoising_grad(unet, xi, t.view(1))[0] for t in probe]
                norms = torch.stack([g.abs().sum() for g in grads])
                weakest, strongest = probe[norms.argmin()], norms.argmax()
                remaining = remaining[(remaining - weakest).abs() > int(s["window"])]
                xi = self.sign_step(xi, xi0, grads[strongest])
                self.tick(float(norms.max()))
            x_out.append(xi)
            sets.append(remaining)
        return torch.cat(x_out), sets

    def schedule_units(self, set_size: int = 4) -> dict[str, float]:
        units = super().schedule_units(set_size)
        # rounds needed to prune T to `keep` is data-dependent; the worst case is select_rounds per photo
        units["pgd"] += set_size * self.settings["select_rounds"] * self.settings["probes"]
        return units
