"""Mist v1 (Liang et al., "Adversarial Example Does Good: Preventing Painting Imitation from Diffusion Models via
Adversarial Examples", ICML 2023 + Mist technical report; psyker-team/mist ``mist_v3.py``) and ACE / Mist-v2
(Zheng et al., "Targeted Attack Improves Protection against Unauthorized Diffusion Customization", ICLR 2025;
psyker-team/mist-v2 ``attacks/mist.py``).

**Mist (v1)**, fused mode (the default ``--mode 2``): L∞ sign-PGD from a uniform random start (advertorch's
``LinfPGDAttack``) minimising ``Σ(E(x') − E(target))² − rate · L_diff(x')``: the *sum*-reduced squared distance of
the VAE latents (textural loss) minus ``rate`` = 1e4 times the *mean*-reduced diffusion loss at a random t
(semantic loss, prompt "a painting"). In mean units that is ``w = rate / (latent elements per photo)``, ≈ 0.61 at
512 px (4×64×64 latents), computed here from the working resolution. Strength 16 grey levels, step 1 grey level
(``alpha = 1/255·2`` on [-1, 1]), 100 steps.
Departures: the target is a procedural high-contrast texture (:func:`target_texture`), not ``MIST.png``; its
latent is drawn once, not re-encoded every step; one encoder pass feeds both terms (the code encodes twice, which
differs only by the VAE's posterior noise).

**ACE (Mist-v2)**, ``lunet`` mode: ASPL-like alternation with a *LoRA* surrogate — 5 epochs × (30 targeted PGD
steps + 10 LoRA steps, lr 1e-4). The PGD objective, on the VAE posterior *mean* of each photo, pushes the UNet's
noise prediction towards the target's VAE latent, min ‖ε̂(x'_t, t) − z_target‖², so every protected photo induces
the same error pattern. Each LoRA step takes one random photo plus one class image (prior weight 0.1, 50 class
images), gradients clipped at 1.0; the text encoder is not trained (the CLI default). Budget 8/255 on [-1, 1] = 4
grey levels (CLI; the web UI's default strength 12 = 6 grey levels), step 0.005 on [-1, 1] = 0.64.
LoRA (rank 4, alpha 4) on the layers the reference's ``lora_diffusion.inject_trainable_lora`` adapts by default:
every linear layer of the UNet's attention blocks (``to_q/k/v/out``) and of its GEGLU feed-forward input
(``ff.net.0.proj``), here through peft.
Saving: Mist v1's code truncates the 8-bit output (``astype(np.uint8)``), so its own docstring puts the final budget
at epsilon + 1 grey levels; Mist-v2's adds 0.5 before truncating (rounding) and clips before it, so a pixel can end
one grey level past the budget. Here every method rounds the step and clips it to ``floor(budget)`` after rounding
(:func:`gapdiff_core.model.protector.apply_budget`): unbiased, never past the budget.
Departures: PGD on the whole set at once (the code loops over the photos; the gradients do not mix); no gradient
checkpointing; procedural target texture as above.
"""
from __future__ import annotations

import math

import torch

from ..attack.lora import UNET_LORA_TARGETS, add_lora
from ..losses import latent_denoising_error
from .base import IterativeProtection, with_models


def target_texture(h: int, w: int, device=None) -> torch.Tensor:
    """A deterministic high-contrast texture (1×3×h×w in [0, 1]): oblique stripes × checker at several scales."""
    yy, xx = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    chans = []
    for k, (period, angle) in enumerate(((9.0, 0.3), (13.0, 1.2), (6.0, 2.1))):
        u = xx * math.cos(angle) + yy * math.sin(angle)
        stripes = torch.sin(2 * math.pi * u / period)
        checker = torch.sign(torch.sin(math.pi * xx / (period * 2)) * torch.sin(math.pi * yy / (period * 2)))
        chans.append(0.5 + 0.35 * stripes * checker + 0.15 * torch.cos(2 * math.pi * (xx + 2 * yy) / (4 + k)))
    return torch.stack(chans).clamp(0, 1).unsqueeze(0)


class Mist(IterativeProtection):
    name = "mist"
    paper = "Mist v1 (Liang et al., ICML 2023 + tech report): fused textural + semantic PGD, 100 steps, strength 16"
    budget_source = "Mist mist_v3.py: strength 16 on 0-255"
    prompt = "a painting"
    defaults = dict(budget=16.0, step=1.0, iterations=100, rate=1e4, random_start=True)
    tiny = dict(iterations=3)

    def total_steps(self, n: int) -> int:
        return self.settings["iterations"]

    def perturb(self, x0: torch.Tensor) -> torch.Tensor:
        s = self.settings
        with torch.no_grad():
            target = self.surrogate.encode_images(target_texture(*x0.shape[-2:], x0.device))
        x_adv = self.random_start(x0) if s["random_start"] else x0.clone()
        emb = self.embeds(x0.shape[0])
        for _ in range(int(s["iterations"])):
            x = x_adv.detach().requires_grad_(True)
            with self.timed("pgd", x.shape[0]):
                z = self.surrogate.encode_images(x)  # one encoder pass for both terms
                textural = (z - target).pow(2).mean()
                semantic = latent_denoising_error(self.surrogate, z, emb).mean()
                loss = textural - self.semantic_weight(z) * semantic
                grad, = torch.autograd.grad(loss, x)
            x_adv = self.sign_step(x_adv, x0, grad, ascend=False)
            self.tick(float(loss.detach()))
        return x_adv

    def semantic_weight(self, latents: torch.Tensor) -> float:
        """The reference's ``sum-MSE − rate · mean loss`` in mean units: rate / (latent elements per photo)."""
        return float(self.settings["rate"]) / latents[0].numel()

    def schedule_units(self, set_size: int = 4) -> dict[str, float]:
        return {"pgd": self.settings["iterations"] * set_size}


#: ACE's LoRA layers: lora_diffusion's default targets (the linear layers of Attention and GEGLU modules)
ACE_LORA_TARGETS = (*UNET_LORA_TARGETS, "ff.net.0.proj")


class ACE(IterativeProtection):
    name = "ace"
    paper = ("ACE / Mist-v2 (Zheng et al., ICLR 2025): 5 x (30 targeted PGD + 10 LoRA steps), "
             "budget 4 grey levels (CLI)")
    budget_source = "Mist-v2 CLI: 8/255 on [-1, 1]"
    defaults = dict(budget=4.0, step=0.64, epochs=5, pgd_steps=30, lora_steps=10, lr=1e-4, rank=4,
                    num_class_images=50, prior_weight=0.1)
    tiny = dict(epochs=2, pgd_steps=2, lora_steps=1, num_class_images=2, class_steps=2)

    def total_steps(self, n: int) -> int:
        return self.settings["epochs"] * (self.settings["pgd_steps"] + self.settings["lora_steps"])

    def perturb(self, x0: torch.Tensor) -> torch.Tensor:
        s = self.settings
        unet = self.clone().unet
        lora = add_lora(unet, ACE_LORA_TARGETS, int(s["rank"]))
        view = with_models(self.surrogate, unet)
        with torch.no_grad():
            z_target = self.surrogate.encode_images(target_texture(*x0.shape[-2:], x0.device))
        sched = self.surrogate.scheduler
        emb = self.embeds(x0.shape[0])
        x_adv = x0.clone()
        for _ in range(int(s["epochs"])):
            for _ in range(int(s["pgd_steps"])):
                x = x_adv.detach().requires_grad_(True)
                with self.timed("pgd", x.shape[0]):
                    z = self.surrogate.encode_images(x, sample=False)  # the posterior mean, as Mist-v2
                    t = torch.randint(0, sched.config.num_train_timesteps, (x.shape[0],), device=x.device)
                    noisy = sched.add_noise(z, torch.randn_like(z), t)
                    pred = view.predict(noisy, t, emb)
                    loss = (pred.float() - z_target.expand_as(pred)).pow(2).mean()
                    grad, = torch.autograd.grad(loss, x)
                x_adv = self.sign_step(x_adv, x0, grad, ascend=False)
                self.tick(float(loss.detach()))
            self.finetune(view, x_adv, s["lora_steps"], s["lr"], order="random", params=lora, kind="train_lora")
        return x_adv

    def schedule_units(self, set_size: int = 4) -> dict[str, float]:
        s = self.settings
        return {"clone": 1, "pgd": s["epochs"] * s["pgd_steps"] * set_size,
                "train_lora": s["epochs"] * s["lora_steps"]}
