"""GAP-Diff objective: timestep-weighted adversarial diffusion loss, GAN terms, loss schedules, DreamBooth's
instance-and-prior loss.

The paper's total loss is  L = α·L_GAN + β·L_adv(x_prot) + γ·L_adv(p(x_prot))  with
L_adv(x, c, t) = E_t[ −w(t) · d(target, f_θ(x_t, t, c)) ],  the target being ε (or v for v-prediction surrogates).
Maximising the surrogate's denoising error is what the generator learns; the GAN term keeps perturbations natural.

Every function takes a surrogate with the :class:`gapdiff_core.diffusion.Surrogate` interface (``encode_images``,
``predict``, ``scheduler``, ``prediction_type``). Images are B×3×H×W in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

TIMESTEP_WEIGHTINGS = ("uniform", "min_snr", "snr", "small_t")
DISTANCES = ("mse", "l1")
SCHEDULES = ("constant", "official")
VAL_SEED = 1234  # the fixed noise of validation and robustness measurements


# ---------------------------------------------------------------- timestep weighting w(t)
def alphas_cumprod(scheduler, device=None) -> torch.Tensor:
    return scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)


def snr(scheduler, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) of the forward process at integer timesteps ``t``."""
    a = alphas_cumprod(scheduler, t.device)[t.long()]
    return a / (1 - a)


def _raw_weights(scheduler, t: torch.Tensor, scheme: str, snr_gamma: float) -> torch.Tensor:
    if scheme == "uniform":
        return torch.ones(t.shape, dtype=torch.float32, device=t.device)
    if scheme in ("min_snr", "snr"):
        s = snr(scheduler, t)
        w = torch.clamp(s, max=snr_gamma) / s  # min-SNR-γ for ε targets (Hang et al. 2023)
        if scheduler.config.prediction_type == "v_prediction":
            w = torch.clamp(s, max=snr_gamma) / (s + 1)
        return w
    if scheme == "small_t":
        return alphas_cumprod(scheduler, t.device)[t.long()].sqrt()  # √ᾱ_t: share of the image left in x_t
    raise ValueError(f"unknown timestep weighting {scheme!r}; "
                     f"choose one of {', '.join(TIMESTEP_WEIGHTINGS)}")


def timestep_weights(scheduler, t: torch.Tensor, scheme: str = "uniform", snr_gamma: float = 5.0) -> torch.Tensor:
    """w(t) for integer timesteps ``t``, normalised so its mean over all T training timesteps is 1.

    - ``uniform``: w = 1 (the official code).
    - ``min_snr`` (alias ``snr``): min(SNR(t), γ)/SNR(t) (ε) or min(SNR, γ)/(SNR+1) (v) — the min-SNR-γ balancing
      of Hang et al. (2023): small-t steps, whose ε-error is dominated by tiny noise, stop swamping the gradient, so
      the mid/high-noise steps that shape identity and layout carry more weight.
    - ``small_t``: √ᾱ_t — emphasises small t, where x_t still holds most of the (perturbed) image, so the
      perturbation reaches the UNet least diluted by noise.
    Normalising keeps the loss on the scale of the uniform loss, so learning rates carry over between schemes.
    """
    all_t = torch.arange(scheduler.config.num_train_timesteps, device=t.device)
    norm = _raw_weights(scheduler, all_t, scheme, snr_gamma).mean()
    return _raw_weights(scheduler, t, scheme, snr_gamma) / norm


# ---------------------------------------------------------------- the diffusion terms
def draw_noise(like: torch.Tensor, official_uniform_noise: bool = False) -> torch.Tensor:
    """Gaussian ε ~ N(0, I) (the paper); ``official_uniform_noise`` reproduces the official ``rand_like`` (U[0,1))."""
    return torch.rand_like(like) if official_uniform_noise else torch.randn_like(like)


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict: ε, or v = √ᾱ·ε − √(1−ᾱ)·x₀ for v-prediction models."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ValueError(f"unsupported prediction type {kind!r} (epsilon or v_prediction)")


def distance(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per-sample distance d (shape [B]), computed in fp32."""
    diff = pred.float() - target.float()
    if kind == "mse":
        return diff.pow(2).flatten(1).mean(1)
    if kind == "l1":
        return diff.abs().flatten(1).mean(1)
    raise ValueError(f"unknown distance {kind!r}; choose one of {', '.join(DISTANCES)}")


def denoising_error(surrogate, x01: torch.Tensor, prompt_embeds: torch.Tensor, *, timesteps: Optional[torch.Tensor] = None,
                    weighting: str = "uniform", dist: str = "mse", snr_gamma: float = 5.0,
                    official_uniform_noise: bool = False, sample_latents: bool = True,
                    noise_samples: int = 1) -> torch.Tensor:
    """Per-sample w(t)·d(target, f_θ(x_t, t, c)) (shape [B]); differentiable w.r.t. ``x01`` and the UNet.

    Timesteps are drawn uniformly from [0, T) unless given; ε, t and the VAE sample use the global torch RNG.
    ``sample_latents=False`` uses the VAE posterior mean instead of a sample (the same for SD's VAE, whose posterior
    std is tiny; a lower-variance signal for the random tiny model, whose posterior std is ~1).
    ``noise_samples`` > 1 averages that many (t, ε) draws per image through the UNet (one VAE pass): the same
    expectation E_t,ε with a lower-variance estimate.
    """
    latents = surrogate.encode_images(x01, sample=sample_latents)
    return latent_denoising_error(surrogate, latents, prompt_embeds, timesteps=timesteps, weighting=weighting,
                                  dist=dist, snr_gamma=snr_gamma, official_uniform_noise=official_uniform_noise,
                                  noise_samples=noise_samples)


def latent_denoising_error(surrogate, latents: torch.Tensor, prompt_embeds: torch.Tensor, *,
                           timesteps: Optional[torch.Tensor] = None, weighting: str = "uniform", dist: str = "mse",
                           snr_gamma: float = 5.0, official_uniform_noise: bool = False,
                           noise_samples: int = 1) -> torch.Tensor:
    """:func:`denoising_error` of already encoded (scaled) latents."""
    latents = latents.float()
    n = int(noise_samples)
    if n > 1:
        if timesteps is not None:
            timesteps = timesteps.repeat_interleave(n)
        if prompt_embeds.shape[0] == latents.shape[0]:
            prompt_embeds = prompt_embeds.repeat_interleave(n, dim=0)
        latents = latents.repeat_interleave(n, dim=0)
    b = latents.shape[0]
    sched = surrogate.scheduler
    if timesteps is None:
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (b,), device=latents.device)
    timesteps = timesteps.to(latents.device).long()
    noise = draw_noise(latents, official_uniform_noise)
    noisy = sched.add_noise(latents, noise, timesteps)
    if prompt_embeds.shape[0] != b:
        prompt_embeds = prompt_embeds.expand(b, -1, -1)
    pred = surrogate.predict(noisy, timesteps, prompt_embeds)
    target = diffusion_target(sched, latents, noise, timesteps)
    per_draw = timestep_weights(sched, timesteps, weighting, snr_gamma) * distance(pred, target, dist)
    return per_draw.view(-1, n).mean(1) if n > 1 else per_draw


def fixed_timesteps(count: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """``count`` evenly spaced timesteps, centred in their bins (8 -> 62, 187, ..., 937)."""
    step = num_train_timesteps / count
    return (torch.arange(count) * step + step / 2).long()


@torch.no_grad()
def mean_denoising_error(surrogate, images01: torch.Tensor, prompt_embeds: torch.Tensor, timesteps: torch.Tensor,
                         seed: int = VAL_SEED, **kwargs) -> torch.Tensor:
    """Per-image denoising error averaged over the fixed ``timesteps``, with seeded noise (training RNG untouched).

    Higher means the surrogate denoises the images worse, i.e. a stronger adversarial effect."""
    devices = [surrogate.device] if surrogate.device.type == "cuda" else []
    total = torch.zeros(images01.shape[0])
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for t in timesteps.tolist():
            ts = torch.full((images01.shape[0],), int(t), dtype=torch.long, device=surrogate.device)
            total += denoising_error(surrogate, images01.to(surrogate.device), prompt_embeds, timesteps=ts,
                                     **kwargs).float().cpu()
    return total / len(timesteps)


def adversarial_loss(surrogate, x01: torch.Tensor, prompt_embeds: torch.Tensor, **kwargs) -> torch.Tensor:
    """L_adv = −E[w(t)·d(target, f_θ(x_t, t, c))] (a scalar to MINIMISE; see :func:`denoising_error` for kwargs)."""
    return -denoising_error(surrogate, x01, prompt_embeds, **kwargs).mean()


# ---------------------------------------------------------------- GAN (official critic)
def discriminator_real_loss(discriminator, clean: torch.Tensor) -> torch.Tensor:
    """BCE(D(clean), 1): clean images (generator domain [-1, 1]) are "origin"."""
    logit = discriminator(clean)
    return F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))


def discriminator_fake_loss(discriminator, fake: torch.Tensor) -> torch.Tensor:
    """BCE(D(fake.detach()), 0): preprocessed protected images are "protected"."""
    logit = discriminator(fake.detach())
    return F.binary_cross_entropy_with_logits(logit, torch.zeros_like(logit))


def discriminator_loss(discriminator, clean: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The official critic loss BCE(D(clean), 1) + BCE(D(fake), 0), two separate forward passes (BatchNorm sees
    the batches separately); the training loop back-propagates each half right after its forward, as official."""
    return discriminator_real_loss(discriminator, clean) + discriminator_fake_loss(discriminator, fake)


def generator_gan_loss(discriminator, fake: torch.Tensor) -> torch.Tensor:
    """BCE(D(fake), 1): the generator wants its (preprocessed) protected images to look clean."""
    logit = discriminator(fake)
    return F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))


# ---------------------------------------------------------------- loss weights and schedules
@dataclass(frozen=True)
class LossWeights:
    """α (GAN), β (adversarial on protected), γ (adversarial on preprocessed-protected)."""

    alpha: float = 0.001
    beta: float = 0.6
    gamma: float = 0.4


def scheduled_weights(schedule: str, weights: LossWeights, progress: float, switch: float = 0.8) -> LossWeights:
    """Loss weights at training ``progress`` in [0, 1].

    - ``constant``: ``weights`` throughout (the paper's formula).
    - ``official``: β = 0, γ = 1 before ``switch`` (the official code: epochs 0–39 of 50, i.e. 0.8), then
      β = 0.6, γ = 0.4 (``adv_weight_part1``); α is kept.
    """
    if schedule == "constant":
        return weights
    if schedule == "official":
        if progress < switch:
            return LossWeights(weights.alpha, 0.0, 1.0)
        return LossWeights(weights.alpha, 0.6, 0.4)
    raise ValueError(f"unknown loss schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


# ---------------------------------------------------------------- surrogate fine-tuning (DreamBooth, L_ft and L_ft')
def instance_and_prior_loss(surrogate, instance_x01: torch.Tensor, instance_embeds: torch.Tensor,
                            class_x01: Optional[torch.Tensor], class_embeds: Optional[torch.Tensor],
                            prior_weight: float = 1.0, official_uniform_noise: bool = False,
                            sample_latents: bool = True) -> torch.Tensor:
    """DreamBooth's loss on images: the mean denoising MSE of the instance images plus λ·that of the class images
    (prior preservation), to MINIMISE.

    Plain (unweighted) MSE with uniform t, as DreamBooth trains; gradients reach whatever parameters are trainable.
    """
    kw = {"official_uniform_noise": official_uniform_noise, "sample_latents": sample_latents}
    loss = denoising_error(surrogate, instance_x01, instance_embeds, **kw).mean()
    if class_x01 is not None and prior_weight > 0:
        loss = loss + prior_weight * denoising_error(surrogate, class_x01, class_embeds, **kw).mean()
    return loss
