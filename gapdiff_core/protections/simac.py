"""SimAC (Wang et al., "SimAC: A Simple Anti-Customization Method for Protecting Face Privacy against Text-to-Image
Synthesis of Diffusion Models", CVPR 2024; somuchtome/SimAC ``attacks/time_feature.py`` and
``scripts/attack_timestep.sh``).

ASPL with adaptive greedy timestep selection. First, per photo, against the base surrogate: start from all T
timesteps; in each of 50 rounds, while more than 100 remain, draw 5 random remaining timesteps (with replacement),
measure the L1 norm of the image gradient at each, delete the window [del_t − 20, del_t + 20) around the weakest
(del_t clamped to [20, T − 20]) and take one PGD step at the strongest (a fresh gradient) on a private copy of the
photo. That copy only steers later probes: the perturbation is discarded, and ASPL then starts from the clean
photos, its PGD sampling each photo's t from that photo's remaining set. Budget 16/255 on [-1, 1] = 8 grey levels,
step 0.64, ASPL's 50 × (3, 6, 3) schedule with UNet + text encoder and prior preservation (200 class images).

Departures: the paper's feature-interference loss on the last decoder block is left out — in the released code it
is added as a detached float and contributes no gradient, so SimAC as released is what is implemented here; the
ASPL departures apply (fp32 unless ``reference_numerics="released"``; the photos as the clean set when no set_A is
given).
"""
from __future__ import annotations

import torch

from .aspl import ASPL


class SimAC(ASPL):
    name = "simac"
    paper = "SimAC (Wang et al., CVPR 2024): ASPL + greedy timestep selection (50 rounds x 5 probes, keep <= 100)"
    budget_source = "SimAC scripts/attack_timestep.sh: 16/255 on [-1, 1]; 8 measured on the GAP-Diff paper's images"
    defaults = dict(ASPL.defaults, budget=8.0, select_rounds=50, probes=5, delta_t=20, keep=100)
    tiny = dict(ASPL.tiny, select_rounds=2, probes=2, keep=900)

    def total_steps(self, n: int) -> int:
        return super().total_steps(n) + n * self.settings["select_rounds"]

    def perturb(self, x0: torch.Tensor) -> torch.Tensor:
        self.timestep_sets = self.select_timesteps(x0)
        return super().perturb(x0)

    def attack(self, model, x_adv: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return self.pgd(model, x_adv, x0, self.settings["pgd_steps"], timestep_sets=self.timestep_sets)

    def select_timesteps(self, x0: torch.Tensor) -> list[torch.Tensor]:
        """Greedy per-photo pruning of the timestep set (``select_timestep`` of the released code)."""
        s = self.settings
        T = self.surrogate.scheduler.config.num_train_timesteps
        dt = int(s["delta_t"])
        model = self.surrogate
        emb = self.embeds(1)
        sets = []
        for i in range(x0.shape[0]):
            xi0 = x0[i:i + 1]
            xi = xi0.clone()
            keep = torch.ones(T, dtype=torch.bool)
            for _ in range(int(s["select_rounds"])):
                remaining = torch.arange(T)[keep]
                if len(remaining) <= s["keep"]:
                    self.tick()
                    continue
                probe = remaining[torch.randint(len(remaining), (int(s["probes"]),))]
                norms = torch.stack([self.denoising_grad(model, xi, t.view(1), embeds=emb)[0].abs().sum()
                                     for t in probe])
                del_t = min(max(int(probe[norms.argmin()]), dt), T - dt)
                keep[max(del_t - 20, 0):del_t + 20] = False
                grad, loss = self.denoising_grad(model, xi, probe[norms.argmax()].view(1), embeds=emb)
                xi = self.sign_step(xi, xi0, grad)
                self.tick(loss)
            sets.append(torch.arange(T)[keep])
        return sets

    def schedule_units(self, set_size: int = 4) -> dict[str, float]:
        units = super().schedule_units(set_size)
        # rounds needed to prune T to `keep` is data-dependent; the worst case is select_rounds per photo
        units["pgd"] += set_size * self.settings["select_rounds"] * (self.settings["probes"] + 1)
        return units
