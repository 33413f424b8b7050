"""Text-to-image sampling from a (DreamBooth-attacked) surrogate: the paper's prompts, seeds per image, batching.

Our own classifier-free-guidance loop over the surrogate's components with a diffusers scheduler (DDIM, PNDM,
DPM-Solver++, Euler) built from the surrogate's scheduler config; nothing is downloaded, no safety checker. Image
``j`` of every prompt starts from noise seeded with ``seed + j``, so a sample does not depend on the batch size or on
how many images are asked for.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..common.progress import ProgressFn, StopFn, stop_requested
from ..common.prompts import PAPER_PROMPTS

SCHEDULERS = ("ddim", "pndm", "dpm++", "euler", "ddpm")


@dataclass
class GenerationConfig:
    """How to sample. The paper: 30 images per prompt (5 batches of 6), 100 steps, guidance 7.5, the model's default
    scheduler (PNDM for SD 2.1-base); see :data:`PAPER_GENERATION`."""

    prompts: tuple[str, ...] = PAPER_PROMPTS
    images_per_prompt: int = 4
    steps: int = 50
    guidance_scale: float = 7.5
    scheduler: str = "ddim"
    seed: int = 0
    batch_size: int = 4
    negative_prompt: str = ""
    resolution: int | None = None  # None: the model's resolution
    autocast: str = "no"  # "no" | "bf16" | "fp16" (CUDA)

    def __post_init__(self):
        if isinstance(self.prompts, str):
            self.prompts = (self.prompts,)
        self.prompts = tuple(self.prompts)
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if self.images_per_prompt < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("images_per_prompt, steps and batch_size must be >= 1")
        if self.autocast not in ("no", "bf16", "fp16"):
            raise ValueError(f"autocast must be 'no', 'bf16' or 'fp16', not {self.autocast!r}")

    def to_dict(self) -> dict:
        return asdict(self)


PAPER_GENERATION = GenerationConfig(images_per_prompt=30, steps=100, guidance_scale=7.5, scheduler="pndm",
                                    batch_size=6)


@dataclass
class Generated:
    """Samples in prompt order: ``images`` N×3×H×W in [0, 1], with the prompt and seed of each."""

    images: torch.Tensor
    prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    completed: bool = True

    def save(self, folder: str | Path, overwrite: bool = True) -> list[Path]:
        """PNG files ``<folder>/<prompt_with_underscores>/<seed>.png``; returns the paths."""
        from ..io import save_image, to_uint8

        paths = []
        for img, p, s in zip(self.images, self.prompts, self.seeds):
            sub = Path(folder) / prompt_folder_name(p)
            sub.mkdir(parents=True, exist_ok=True)
            paths.append(save_image(sub / f"{s:06d}.png", to_uint8(img), overwrite=overwrite))
        return paths


def prompt_folder_name(prompt: str) -> str:
    """'a photo of sks person' -> 'a_photo_of_sks_person' (as the official scripts name their folders)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", prompt.strip()).strip("_") or "empty"


def make_scheduler(surrogate, name: str):
    """A fresh inference scheduler of kind ``name`` from the surrogate's (training) scheduler config."""
    from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                           PNDMScheduler)

    cfg = surrogate.scheduler.config
    if name == "ddim":
        return DDIMScheduler.from_config(cfg, set_alpha_to_one=False)
    if name == "pndm":
        return PNDMScheduler.from_config(cfg, skip_prk_steps=True, set_alpha_to_one=False)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++")
    if name == "euler":
        return EulerDiscreteScheduler.from_config(cfg)
    if name == "ddpm":
        return DDPMScheduler.from_config(cfg)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


def initial_noise(seeds: list[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """Standard normal latents, one per seed, drawn on the CPU (identical on every device)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def sample(surrogate, prompts: list[str], seeds: list[int], *, steps: int = 50, guidance_scale: float = 7.5,
           scheduler: str = "ddim", negative_prompt: str = "", resolution: int | None = None,
           autocast: str = "no", should_stop: StopFn = None,
           on_step: Callable[[int], None] | None = None) -> torch.Tensor | None:
    """One batch: images B×3×H×W in [0, 1] for ``prompts[i]`` from noise seeded ``seeds[i]``.

    Returns None when ``should_stop`` asked to stop before the batch finished.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    res = int(resolution or surrogate.resolution)
    scale = surrogate.latent_scale
    if res % scale:
        raise ValueError(f"resolution {res} is not a multiple of the VAE's factor {scale}")
    device = surrogate.device
    sched = make_scheduler(surrogate, scheduler)
    sched.set_timesteps(steps, device=device)
    latents = initial_noise(seeds, (surrogate.unet.config.in_channels, res // scale, res // scale))
    latents = latents.to(device, torch.float32) * sched.init_noise_sigma
    cond = surrogate.encode_prompt(list(prompts))
    use_cfg = guidance_scale != 1.0
    if use_cfg:
        cond = torch.cat([surrogate.encode_prompt([negative_prompt] * len(prompts)), cond])
    amp = _autocast(device, autocast)
    for i, t in enumerate(sched.timesteps):
        if stop_requested(should_stop):
            return None
        inp = torch.cat([latents, latents]) if use_cfg else latents
        inp = sched.scale_model_input(inp, t)
        with amp:
            pred = surrogate.predict(inp, t.expand(inp.shape[0]).to(device), cond).float()
        if use_cfg:
            uncond, text = pred.chunk(2)
            pred = uncond + guidance_scale * (text - uncond)
        latents = sched.step(pred, t, latents).prev_sample
        if on_step is not None:
            on_step(i + 1)
    return surrogate.decode_latents(latents).float().cpu()


def _autocast(device: torch.device, mode: str):
    if mode == "no":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


def generate(surrogate, config: GenerationConfig | None = None, *, progress: ProgressFn = None,
             should_stop: StopFn = None, out_dir: str | Path | None = None) -> Generated:
    """``config.images_per_prompt`` images for each of ``config.prompts`` (image ``j`` seeded ``seed + j``).

    ``progress(done, total, None)`` is called after every batch (images done of the total). On cancellation the
    images finished so far are returned with ``completed=False``. With ``out_dir`` the PNGs are written too.
    """
    config = config or GenerationConfig()
    jobs = [(p, config.seed + j) for p in config.prompts for j in range(config.images_per_prompt)]
    total = len(jobs)
    images, done_prompts, done_seeds = [], [], []
    completed = True
    for start in range(0, total, config.batch_size):
        batch = jobs[start:start + config.batch_size]
        out = sample(surrogate, [p for p, _ in batch], [s for _, s in batch], steps=config.steps,
                     guidance_scale=config.guidance_scale, scheduler=config.scheduler,
                     negative_prompt=config.negative_prompt, resolution=config.resolution,
                     autocast=config.autocast, should_stop=should_stop)
        if out is None:
            completed = False
            break
        images.append(out)
        done_prompts += [p for p, _ in batch]
        done_seeds += [s for _, s in batch]
        if progress is not None:
            progress(len(done_seeds), total, None)
    res = int(config.resolution or surrogate.resolution)
    result = Generated(torch.cat(images) if images else torch.zeros(0, 3, res, res), done_prompts, done_seeds,
                       completed)
    if out_dir is not None:
        result.save(out_dir)
    return result
