"""Noisy upscaling: Gaussian noise, then a ×4 diffusion upscaler (the ``StableDiffusionUpscalePipeline``
architecture), as Hönig et al. (ICLR 2025) remove protections. ``upscaler=FOLDER`` loads a real upscaler (e.g. a
local copy of stable-diffusion-x4-upscaler) offline; ``upscaler=tiny`` builds a tiny random-weight one from the
configs below: it tests the plumbing and removes nothing meaningfully (a toy).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from ..diffusion.surrogate import TINY_TEXT_ENCODER
from ..diffusion.tokenizer import clip_tokenizer
from .filters import gaussian_noise
from .geometry import resize
from .specs import Param, TransformSpecError, TransformType

TINY = "tiny"
TINY_UPSCALER_UNET = {  # stable-diffusion-x4-upscaler's layout, narrowed: 4 latent + 3 low-res image channels in
    "sample_size": 32, "in_channels": 7, "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8, "cross_attention_dim": 32,
    "attention_head_dim": 4, "num_class_embeds": 1000, "act_fn": "silu",
}
TINY_UPSCALER_VAE = {  # three blocks: the x4 upscaler's 4x latent scale, its 0.08333 scaling factor
    "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "scaling_factor": 0.08333,
}
UPSCALER_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                     "beta_schedule": "scaled_linear"}  # the x4 upscaler's


def tiny_upscaler(seed: int = 0):
    """A tiny random-weight ``StableDiffusionUpscalePipeline`` (deterministic from ``seed``), built offline."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, \
        UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(TINY_UPSCALER_UNET)
        vae = AutoencoderKL.from_config(TINY_UPSCALER_VAE)
        text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TINY_TEXT_ENCODER.items()
                                                if k not in ("model_type", "architectures")}))
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text, tokenizer=clip_tokenizer("sd1"), unet=unet,
        low_res_scheduler=DDPMScheduler(**UPSCALER_SCHEDULE),
        scheduler=DDIMScheduler(**UPSCALER_SCHEDULE, prediction_type="v_prediction"), max_noise_level=350)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@lru_cache(maxsize=2)
def load_upscaler(source: str):
    """``"tiny"`` or a local diffusers folder of a ``StableDiffusionUpscalePipeline`` (nothing is downloaded)."""
    if source == TINY:
        return tiny_upscaler()
    folder = Path(source).expanduser()
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"noisy-upscale: {folder} is not a diffusers upscaler folder (no model_index.json); "
                                "pass upscaler=FOLDER of a local stable-diffusion-x4-upscaler, or upscaler=tiny")
    from diffusers import StableDiffusionUpscalePipeline

    pipe = StableDiffusionUpscalePipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def noisy_upscale(x: torch.Tensor, sigma: float = 0.05, upscaler: str = "", output: str = "input",
                  noise_level: int = 320, steps: int = 75, guidance: float = 9.0,
                  seed: int = 0) -> torch.Tensor:
    """Noisy upscaling: add N(0, ``sigma``²) noise (8-bit, clipped), upscale ×4 with the diffusion upscaler
    (empty prompt, ``noise_level``, ``steps`` sampler steps, classifier-free ``guidance``), then, with ``output``
    "input", resize back to the input size (Pillow bicubic), as fine-tuning at the original resolution would;
    "x4" keeps the upscaler's size.

    Source: Hönig et al., ICLR 2025, github.com/ethz-spylab/robust-style-mimicry (``noise.py``: σ 0.05;
    ``upscale.py``: stable-diffusion-x4-upscaler, noise_level 320, the pipeline's 75 steps and guidance 9)."""
    pipe = load_upscaler(TINY if upscaler.lower() == TINY else upscaler).to(x.device)
    noisy = gaussian_noise(x, float(sigma), seed=seed)
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    up = pipe(prompt=[""] * x.shape[0], image=noisy, noise_level=int(noise_level),
              num_inference_steps=int(steps), guidance_scale=float(guidance), generator=g, output_type="pt").images
    up = up.float().to(x.device)
    return resize(up, tuple(x.shape[-2:]), filter="bicubic") if output == "input" else up


def _check(params: dict, spec: str) -> None:
    if not params["upscaler"]:
        raise TransformSpecError(spec, "noisy-upscale needs upscaler=FOLDER (a local diffusers "
                                       "stable-diffusion-x4-upscaler) or upscaler=tiny (random weights: a toy)")


ENTRIES = (
    TransformType("noisy-upscale", noisy_upscale, (
        Param("sigma", float, 0.05, "noise std on [0, 1]", low=0.0, high=1.0),
        Param("upscaler", "path", "", "diffusers upscaler folder, or tiny"),
        Param("output", "choice", "input", "output size: the input's or the upscaler's", choices=("input", "x4")),
        Param("noise_level", int, 320, "upscaler noise level", low=0, high=350),
        Param("steps", int, 75, "upscaler sampler steps", low=1, high=1000),
        Param("guidance", float, 9.0, "classifier-free guidance", low=0.0, high=100.0),
    ), "Gaussian noise, then a x4 diffusion upscaler (upscaler=FOLDER|tiny)", random=True, check=_check),
)
