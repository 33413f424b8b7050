"""Training configuration: one flat dataclass, loaded from YAML/TOML/JSON plus ``key=value`` overrides."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ..losses import DISTANCES, SCHEDULES, TIMESTEP_WEIGHTINGS
from ..common.budget import check_budget
from ..common.prompts import CLASS_PROMPT, INSTANCE_PROMPT

FINETUNE_ON = ("protected", "clean", "both")


@dataclass
class TrainConfig:
    """Every knob of ``gapdiff train``. Budgets are grey levels (0-255 scale, :func:`check_budget`'s rule: 1-255);
    ``None`` means "not set"."""

    # data
    train_dir: Optional[str] = None          # image folder (FFHQ-style faces); None -> the bundled sample photos
    val_dir: Optional[str] = None            # held-out folder; None -> the last `val_count` images of train_dir
    val_count: int = 4
    resolution: int = 512                    # working resolution (images are resized to it; multiple of 256)
    min_side_fraction: float = 0.5           # skip images whose shorter side < fraction * resolution
    max_aspect: float = 2.0                  # skip images more oblong than this
    augment: bool = False                    # random crop (80-100 % of the side) + horizontal flip
    num_workers: int = 0
    # models
    surrogate: str = "tiny"                  # "tiny", "tiny-sd2", a diffusers folder or a single-file checkpoint
    surrogate_config: Optional[str] = None   # bundled config name for single files (sd15, sd21-base, sd21-v)
    surrogate_seed: int = 0                  # seed of the tiny surrogate
    surrogate_warmup_steps: int = 0          # denoising warm-up of a RANDOM (tiny) surrogate's UNet; 0 for real models
    surrogate_warmup_lr: float = 3e-3
    surrogate_dtype: str = "fp32"            # fp32 | bf16 | fp16 (frozen weights)
    gradient_checkpointing: bool = False
    ngf: int = 64
    budget: float = 8.0
    disc_ngf: int = 64
    disc_blocks: int = 4
    # objective
    instance_prompt: str = INSTANCE_PROMPT
    weighting: str = "uniform"               # uniform | min_snr (alias snr) | small_t
    snr_gamma: float = 5.0
    distance: str = "mse"                    # mse | l1
    official_uniform_noise: bool = False     # official rand_like noise instead of Gaussian
    sample_latents: bool = True              # VAE posterior sample (official); false = posterior mean
    noise_samples: int = 1                   # (t, eps) draws per image and step through the UNet (variance reduction)
    alpha: float = 0.001                     # GAN weight
    beta: float = 0.6                        # adversarial loss on protected images
    gamma: float = 0.4                       # adversarial loss on preprocessed-protected images
    schedule: str = "constant"               # constant | official (gamma-only phase, then 0.6/0.4)
    schedule_switch: float = 0.8             # fraction of training at which `official` switches (40/50 epochs)
    preprocess: Any = "default"              # default | official | none | list of {name, p, params}
    # alternating surrogate fine-tuning (DreamBooth on the UNet)
    finetune_every: int = 10                 # K generator steps between fine-tuning rounds
    finetune_steps: int = 0                  # M steps per round; 0 = the official fixed base model
    finetune_lr: float = 5e-6
    finetune_on: str = "protected"           # L_ft's instance images: protected ([x; p(x)]) | clean | both
    prior_weight: float = 1.0                # λ
    class_prompt: str = CLASS_PROMPT
    class_dir: Optional[str] = None          # class images; None -> the clean training batch stands in
    # optimisation
    batch_size: int = 6
    lr: float = 1e-3
    disc_lr: float = 1e-3
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999])
    lr_schedule: str = "constant"            # constant | cosine
    epochs: int = 50
    max_steps: Optional[int] = None          # overrides epochs when set
    seed: int = 0
    mixed_precision: str = "no"              # no | fp16 | bf16 (accelerate autocast)
    # outputs
    output_dir: str = "runs/gapdiff"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    val_every: int = 500
    val_jpeg_quality: int = 70
    val_timesteps: int = 8                   # fixed, evenly spaced timesteps of the validation loss
    export_name: str = "generator.safetensors"
    tensorboard: bool = True                 # used only if the tensorboard package is installed
    progress: bool = True

    def validate(self) -> "TrainConfig":
        def bad(msg):
            raise ValueError(f"training config: {msg}")
        if self.weighting not in TIMESTEP_WEIGHTINGS:
            bad(f"weighting={self.weighting!r}; choose one of {', '.join(TIMESTEP_WEIGHTINGS)}")
        if self.distance not in DISTANCES:
            bad(f"distance={self.distance!r}; choose one of {', '.join(DISTANCES)}")
        if self.schedule not in SCHEDULES:
            bad(f"schedule={self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.resolution % 256 or self.resolution < 512:
            bad(f"resolution={self.resolution}: the generator needs a multiple of 256, at least 512")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            bad(f"mixed_precision={self.mixed_precision!r}; choose no, fp16 or bf16")
        if self.surrogate_dtype not in ("fp32", "bf16", "fp16"):
            bad(f"surrogate_dtype={self.surrogate_dtype!r}; choose fp32, bf16 or fp16")
        if self.finetune_on not in FINETUNE_ON:
            bad(f"finetune_on={self.finetune_on!r}; choose one of {', '.join(FINETUNE_ON)}")
        if self.lr_schedule not in ("constant", "cosine"):
            bad(f"lr_schedule={self.lr_schedule!r}; choose constant or cosine")
        for name in ("batch_size", "checkpoint_every", "log_every", "val_every", "finetune_every", "val_timesteps"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1")
        if self.finetune_steps < 0:
            bad("finetune_steps must be >= 0")
        check_budget(self.budget, "training config: budget")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def preprocess_config(spec: Any) -> list[dict]:
    """The preprocessing sampler's entries of ``TrainConfig.preprocess`` (default, official, none or a list)."""
    from ..preprocess import DEFAULT_CONFIG, official_prelayer_config

    if spec in (None, "none", "identity"):
        return [{"name": "identity", "p": 1.0}]
    if spec == "default":
        return [dict(e) for e in DEFAULT_CONFIG]
    if spec == "official":
        return official_prelayer_config()
    if isinstance(spec, list):
        return spec
    raise ValueError(f"training config: preprocess={spec!r}; use default, official, none or a list of "
                     "{name, p, ...} entries")


def _read_file(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
            import tomli as tomllib
        data = tomllib.loads(text)
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a training config must be a mapping of keys to values")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` with a YAML-typed value (``max_steps=3``, ``augment=true``, ``preprocess=[...]``)."""
    if "=" not in item:
        raise ValueError(f"override {item!r}: expected key=value")
    key, value = item.split("=", 1)
    return key.strip(), yaml.safe_load(value) if value.strip() else None


def load_config(path: Union[str, Path, None] = None, overrides: Optional[list[str]] = None,
                **values: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a file, then ``overrides`` (``key=value`` strings), then keyword values."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such training config")
        data.update(_read_file(path))
    for item in overrides or []:
        k, v = parse_override(item)
        data[k] = v
    data.update(values)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"{path}: " if path is not None else ""
        raise ValueError(f"{where}unknown training config keys {unknown}; known keys: {', '.join(sorted(known))}")
    return TrainConfig(**data).validate()
