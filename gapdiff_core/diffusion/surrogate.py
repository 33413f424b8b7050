"""The surrogate text-to-image diffusion model the generator is trained against (Stable Diffusion layout).

A :class:`Surrogate` bundles VAE, CLIP text encoder + tokenizer, UNet and a DDPM noise scheduler, frozen by default.
``Surrogate.tiny()`` builds a tiny random-weight model of the same architecture from the configs in this module:
the model of every test and of the demo (it protects nothing real; ``is_demo`` marks it).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..io.atomic import folder_beside, write_file
from . import convert
from .tokenizer import clip_tokenizer, write_tokenizer_files

CONFIG_ROOT = Path(__file__).with_name("configs")
SURROGATE_MARKER = "gapdiff_surrogate.json"

# ---------------------------------------------------------------- tiny model configs (diffusers / transformers)
TINY_UNET = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 64, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
    "cross_attention_dim": 32, "attention_head_dim": 4, "use_linear_projection": False,
    "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1,
}
TINY_VAE = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 512,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "act_fn": "silu",
    "scaling_factor": 0.18215,
}
TINY_TEXT_ENCODER = {
    "model_type": "clip_text_model", "architectures": ["CLIPTextModel"],
    "vocab_size": 49408, "max_position_embeddings": 77, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "projection_dim": 32, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
}
SD_DDPM_SCHEDULER = {
    "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "clip_sample": False, "prediction_type": "epsilon", "steps_offset": 1,
}


def tiny_configs(family: str = "sd1") -> tuple[dict, dict, dict]:
    """(unet, vae, text encoder) configs of the tiny model in the SD 1.x or SD 2.x flavour."""
    if family == "sd1":
        return TINY_UNET, TINY_VAE, TINY_TEXT_ENCODER
    if family == "sd2":
        return (dict(TINY_UNET, use_linear_projection=True), TINY_VAE,
                dict(TINY_TEXT_ENCODER, hidden_act="gelu", pad_token_id=0))
    raise ValueError(f"unknown family {family!r}; expected 'sd1' or 'sd2'")


def family_of(unet, text_encoder, marker: dict | None = None) -> str:
    """SD 1.x or 2.x: by context width for real models (768 / 1024); for others (tiny) the family gapdiff
    recorded in ``marker``, else the text encoder's activation (OpenCLIP GELU vs CLIP quick-GELU)."""
    width = unet.config.cross_attention_dim
    if width in (768, 1024):
        return "sd1" if width == 768 else "sd2"
    if marker and marker.get("family") in ("sd1", "sd2"):
        return marker["family"]
    return "sd2" if text_encoder.config.hidden_act == "gelu" else "sd1"


def resolution_of(unet, vae) -> int:
    """Native image size: latent sample size times the VAE's downsampling."""
    return int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)


def _no_xformers(model) -> None:
    """Use PyTorch SDPA attention (diffusers' default) wherever an xformers processor was set."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    procs = getattr(model, "attn_processors", {})
    if any("XFormers" in type(p).__name__ for p in procs.values()):
        model.set_attn_processor(AttnProcessor2_0())


class Surrogate:
    """Stable-Diffusion-style latent diffusion model used as the attack target. Frozen and in eval mode by default."""

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, *, name: str, is_demo: bool = False,
                 resolution: int = 512, family: str = "sd1", config_dir: str | Path | None = None):
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.unet, self.scheduler = unet, scheduler
        self.name, self.is_demo, self.resolution, self.family = name, bool(is_demo), int(resolution), family
        self.config_dir = Path(config_dir) if config_dir is not None else None
        self._prompt_cache: dict[str, torch.Tensor] = {}
        for m in (unet, vae):
            _no_xformers(m)
        self.freeze()

    # ------------------------------------------------------------ construction
    @classmethod
    def tiny(cls, seed: int = 0, family: str = "sd1") -> "Surrogate":
        """Tiny random-weight SD-architecture model (deterministic from ``seed``; 512x512 images -> 64x64 latents).

        ``family="sd2"`` gives the SD 2.x flavour (OpenCLIP key layout when saved, ``"!"`` padding, GELU, linear
        transformer projections); the default is the SD 1.x flavour.
        """
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        unet_cfg, vae_cfg, text_cfg = tiny_configs(family)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel.from_config(_strip(unet_cfg))
            vae = AutoencoderKL.from_config(_strip(vae_cfg))
            text_encoder = CLIPTextModel(CLIPTextConfig(**_strip(text_cfg)))
        scheduler = DDPMScheduler.from_config(_strip(SD_DDPM_SCHEDULER))
        config = "tiny" if family == "sd1" else "tiny-sd2"
        return cls(vae, text_encoder, clip_tokenizer(family), unet, scheduler, name=f"{config} (seed {seed})",
                   is_demo=True, resolution=512, family=family, config_dir=CONFIG_ROOT / config)

    @classmethod
    def random(cls, config: str | Path = "sd21-base", seed: int = 0, dtype: torch.dtype | None = None) -> "Surrogate":
        """Random weights in the architecture of a config folder (a bundled name such as ``"sd15"``, ``"sd21-base"``,
        ``"sd21-v"``, or a diffusers folder): full-size stand-ins for speed/memory benchmarks and host-loader checks
        without real weights. Marked ``is_demo``. (SD 2.1 size: about 1.3 G parameters, 5 GB in fp32.)"""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from .tokenizer import tokenizer_from_config

        folder = CONFIG_ROOT / config if isinstance(config, str) and (CONFIG_ROOT / config).is_dir() else Path(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
            text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(
                folder, subfolder="text_encoder", local_files_only=True))
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
        surrogate = cls(vae, text_encoder, tokenizer_from_config(folder / "tokenizer"), unet, scheduler,
                        name=f"random {folder.name} (seed {seed})", is_demo=True,
                        resolution=resolution_of(unet, vae), family=family_of(unet, text_encoder), config_dir=folder)
        return surrogate.to(dtype=dtype) if dtype is not None else surrogate

    # ------------------------------------------------------------ properties
    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def latent_scale(self) -> int:
        """Image pixels per latent pixel (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def modules(self) -> dict:
        return {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}

    def __repr__(self) -> str:
        n = {k: sum(p.numel() for p in m.parameters()) for k, m in self.modules().items()}
        return (f"Surrogate({self.name!r}, family={self.family}, resolution={self.resolution}, "
                f"prediction={self.prediction_type}, demo={self.is_demo}, params={n})")

    # ------------------------------------------------------------ state
    def freeze(self) -> "Surrogate":
        """``requires_grad_(False)`` and eval mode on every component."""
        for m in self.modules().values():
            m.requires_grad_(False)
            m.eval()
        return self

    def enable_gradient_checkpointing(self, on: bool = True) -> "Surrogate":
        """Trade compute for memory in UNet, VAE and text encoder (active only while gradients are recorded)."""
        for m in (self.unet, self.vae):
            m.enable_gradient_checkpointing() if on else m.disable_gradient_checkpointing()
        te = self.text_encoder
        prefix = "activation" if hasattr(te, "activation_checkpointing_enable") else "gradient"  # transformers >= 5.x
        getattr(te, f"{prefix}_checkpointing_{'enable' if on else 'disable'}")()
        return self

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Surrogate":
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        if kwargs:
            for m in self.modules().values():
                m.to(**kwargs)
        self._prompt_cache.clear()
        return self

    def clear_prompt_cache(self) -> None:
        """Forget cached prompt embeddings (needed after changing the text encoder's weights)."""
        self._prompt_cache.clear()

    # ------------------------------------------------------------ model calls
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return ids

    def encode_prompt(self, prompts: list[str] | str) -> torch.Tensor:
        """B×77×D text embeddings (last hidden state). Cached per prompt, computed without grad while the text
        encoder is frozen; with a trainable text encoder they are computed afresh with grad."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if any(p.requires_grad for p in self.text_encoder.parameters()):
            ids = self.tokenize(prompts).to(self.text_encoder.device)
            return self.text_encoder(ids)[0]
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            with torch.no_grad():
                ids = self.tokenize(missing).to(self.text_encoder.device)
                out = self.text_encoder(ids)[0]
            self._prompt_cache.update(zip(missing, out))
        return torch.stack([self._prompt_cache[p] for p in prompts])

    def encode_images(self, x01: torch.Tensor, sample: bool = True,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Images B×3×H×W in [0, 1] -> scaled latents (differentiable w.r.t. ``x01``)."""
        dist = self._posterior(x01)
        z = dist.sample(generator=generator) if sample else dist.mode()
        return z * self.vae.config.scaling_factor

    def encode_sample_and_mean(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One encoder pass -> (a posterior sample, the posterior mean), both scaled latents."""
        dist = self._posterior(x01)
        return dist.sample() * self.vae.config.scaling_factor, dist.mode() * self.vae.config.scaling_factor

    def _posterior(self, x01: torch.Tensor):
        return self.vae.encode((x01 * 2 - 1).to(device=self.vae.device, dtype=self.vae.dtype)).latent_dist

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [0, 1]."""
        z = latents.to(device=self.vae.device, dtype=self.vae.dtype) / self.vae.config.scaling_factor
        return ((self.vae.decode(z).sample + 1) / 2).clamp(0, 1)

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                prompt_embeds: torch.Tensor) -> torch.Tensor:
        """UNet output (ε or v, see ``prediction_type``)."""
        return self.unet(noisy_latents.to(self.unet.dtype), timesteps,
                         encoder_hidden_states=prompt_embeds.to(self.unet.dtype)).sample

    # ------------------------------------------------------------ saving
    def _marker(self) -> dict:
        return {"name": self.name, "is_demo": self.is_demo, "family": self.family, "resolution": self.resolution,
                "config": self.config_dir.name if self.config_dir is not None else None}

    def save_pretrained(self, folder: str | Path) -> Path:
        """Diffusers folder layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), written
        atomically (:func:`atomic.folder_beside`): the folder appears complete or not at all, and a previous one is
        replaced only once the new one is complete (a failed save leaves it as it was)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with folder_beside(folder) as tmp:
            self.unet.save_pretrained(tmp / "unet")
            self.vae.save_pretrained(tmp / "vae")
            self.text_encoder.save_pretrained(tmp / "text_encoder")
            self.scheduler.save_pretrained(tmp / "scheduler")
            write_tokenizer_files(tmp / "tokenizer", self.tokenizer.pad_token, self.tokenizer.model_max_length)
            (tmp / "model_index.json").write_text(json.dumps(model_index(), indent=2), encoding="utf-8")
            (tmp / SURROGATE_MARKER).write_text(json.dumps(self._marker(), indent=2), encoding="utf-8")
        return folder

    def ldm_state_dict(self) -> dict[str, torch.Tensor]:
        """All weights in the original SD (ldm) key layout."""
        state = convert.unet_to_ldm(self.unet.state_dict(), self.unet.config)
        state.update(convert.vae_to_ldm(self.vae.state_dict(), self.vae.config))
        te = self.text_encoder.state_dict()
        if self.family == "sd2":
            state.update(convert.openclip_to_ldm(te, self.text_encoder.config.num_attention_heads))
        else:
            state.update(convert.clip_to_ldm(te))
        return state

    def save_single_file(self, path: str | Path) -> Path:
        """One ``.safetensors`` file in the original SD layout (as A1111/ComfyUI keep checkpoints), written
        atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: single-file checkpoints are written as .safetensors only")
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().clone() for k, v in self.ldm_state_dict().items()}
        meta = {f"gapdiff.{k}": str(v) for k, v in self._marker().items() if v is not None}
        meta["format"] = "pt"
        return write_file(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def _strip(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in ("model_type", "architectures")}


def model_index() -> dict:
    return {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": [None, None],
            "feature_extractor": [None, None], "requires_safety_checker": False}
