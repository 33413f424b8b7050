"""Training configuration: one flat dataclass, loaded from YAML/TOML/JSON plus ``key=value`` overrides."""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ..losses import DISTANCES, SCHEDULES, TIMESTEP_WEIGHTINGS
from ..common.budget import check_budget
from ..common.prompts import CLASS_PROMPT, INSTANCE_PROMPT

FINETUNE_ON = ("protected", "clean", "both")
#: Numeric keys and their allowed ranges (low, high; None: unbounded), checked before anything loads.
RANGES = {"val_count": (0, None), "min_side_fraction": (0, 1), "max_aspect": (1, None),
          "num_workers": (0, None), "surrogate_warmup_steps": (0, None), "surrogate_warmup_lr": (0, None),
          "ngf": (1, 128), "disc_ngf": (1, None), "disc_blocks": (1, None), "snr_gamma": (0, None),
          "noise_samples": (1, None), "alpha": (0, None), "beta": (0, None), "gamma": (0, None),
          "schedule_switch": (0, 1), "finetune_every": (1, None), "finetune_steps": (0, None), "finetune_lr": (0, None),
          "prior_weight": (0, None), "batch_size": (1, None), "lr": (0, None), "disc_lr": (0, None),
          "epochs": (1, None), "max_steps": (1, None), "checkpoint_every": (1, None), "keep_checkpoints": (0, None),
          "log_every": (1, None), "val_every": (1, None), "val_jpeg_quality": (1, 100), "val_timesteps": (1, None)}
_KINDS = {int: "a whole number", float: "a number", bool: "true or false", str: "text", list: "a list"}


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
        """Check every key's type and range (one-line ValueError naming the key and value), before any model
        loads; numbers written as text (PyYAML reads ``5e-4`` as a string) become numbers."""
        def bad(msg):
            raise ValueError(f"training config: {msg}")
        for name, kind in _field_kinds().items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if kind is float and isinstance(value, str):
                value = _number(value)
                setattr(self, name, value)
            if not _is_kind(value, kind):
                bad(f"{name}={value!r}: must be {_KINDS[kind]}")
            low, high = RANGES.get(name, (None, None))
            if (low is not None and value < low) or (high is not None and value > high):
                bad(f"{name}={value!r}: must be " + (f"{low}-{high}" if high is not None else f">= {low}"))
        if len(self.adam_betas) != 2 or not all(_is_kind(b, float) and 0 <= b < 1 for b in self.adam_betas):
            bad(f"adam_betas={self.adam_betas!r}: must be two numbers in [0, 1)")
        preprocess_config(self.preprocess)
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
        check_budget(self.budget, "training config: budget")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _field_kinds() -> dict[str, type]:
    """Each typed key's kind (int, float, bool, str or list); keys typed Any, and the budget (common.budget's
    rule), are checked by their own rule."""
    kinds = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        if name == "budget":
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        kind = args[0] if typing.get_origin(hint) is Union else hint
        if kind in _KINDS:
            kinds[name] = kind
    return kinds


_OPTIONAL = {f.name for f in dataclasses.fields(TrainConfig) if f.default is None}


def _number(text: str):
    """``text`` as a float when it reads as a finite one (``5e-4``), else unchanged (refused by the type check)."""
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def _is_kind(value, kind: type) -> bool:
    if isinstance(value, bool) and kind is not bool:
        return False
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


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
    """The mapping in a YAML/TOML/JSON config file; a file that does not parse is a one-line ValueError naming it,
    and where."""
    try:
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
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (UTF-8); give a YAML, TOML or JSON training config") from None
    except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError
        raise ValueError(f"{path}: not valid {path.suffix[1:].upper()} ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a training config must be a mapping of keys to values")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What PyYAML found wrong and where, on one line."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(getattr(exc, "problem", None) or exc).split())


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` with a YAML-typed value (``max_steps=3``, ``augment=true``, ``preprocess=[...]``)."""
    if "=" not in item:
        raise ValueError(f"override {item!r}: expected key=value")
    key, value = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ValueError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(exc)})") from None


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
