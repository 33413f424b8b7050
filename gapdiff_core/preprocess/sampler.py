"""PreprocessSampler: picks ONE simulator per batch (like the official Prelayer), reproducibly.

A training config's ``preprocess`` list names simulators with a probability ``p`` and parameters; a parameter given
as ``[lo, hi]`` is drawn uniformly per batch, a choice given as a list is drawn among its items. Names and values
are checked when the sampler is built, with errors naming the entry and the problem.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch

from .diff_platforms import PLATFORMS, codec_as_jpeg, platform
from .differentiable_jpeg import diff_jpeg
from .jpeg_masking import jpeg_mask01
from .simulators import (RESIZE_FILTERS, bicubic_upscale_unsharp, crop, gauss, gaussian_blur, gaussian_noise, quantize,
                         rescale, resize_down_up)

DEFAULT_CONFIG: list[dict[str, Any]] = [
    {"name": "jpeg_mask", "p": 0.25},
    {"name": "diff_jpeg", "p": 0.25, "quality": [30, 90]},
    {"name": "blur", "p": 0.25, "sigma": 2.0, "kernel_size": 7},
    {"name": "identity", "p": 0.25},
]


@dataclass(frozen=True)
class Knob:
    """A simulator parameter: default, kind (``int``, ``float`` or a tuple of choices) and inclusive range."""

    default: Any
    kind: Union[type, tuple[str, ...]]
    low: Optional[float] = None
    high: Optional[float] = None

    def check(self, value: Any, where: str) -> None:
        if isinstance(self.kind, tuple):
            if value not in self.kind:
                raise ValueError(f"{where} must be one of {', '.join(self.kind)}, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"{where} must be a number, got {value!r}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ValueError(f"{where} must be in [{self.low}, {self.high}], got {value}")


@dataclass(frozen=True)
class Simulator:
    """``fn(x, generator, **params)`` and its parameters."""

    fn: Callable
    knobs: dict[str, Knob]


def _noise(x, g, std):
    return gaussian_noise(x, std, g if x.device.type == "cpu" else None)


FILTER = Knob("bilinear", RESIZE_FILTERS)
_SIMULATORS: dict[str, Simulator] = {
    "identity": Simulator(lambda x, g: x, {}),
    "jpeg_mask": Simulator(lambda x, g: jpeg_mask01(x), {}),
    "diff_jpeg": Simulator(lambda x, g, quality, subsampling: diff_jpeg(x, quality, subsampling == "420"),
                           {"quality": Knob(75, int, 1, 100), "subsampling": Knob("420", ("420", "444"))}),
    "blur": Simulator(lambda x, g, sigma, kernel_size: gaussian_blur(x, sigma, kernel_size),
                      {"sigma": Knob(2.0, float, 0.01, 100), "kernel_size": Knob(7, int, 1, 255)}),
    "gauss": Simulator(lambda x, g, sigma: gauss(x, sigma), {"sigma": Knob(1.0, float, 0.01, 20)}),
    "noise": Simulator(_noise, {"std": Knob(0.05, float, 0, 1)}),
    "quantize": Simulator(lambda x, g, levels: quantize(x, levels), {"levels": Knob(64, int, 2, 256)}),
    "resize": Simulator(lambda x, g, scale: resize_down_up(x, scale), {"scale": Knob(0.5, float, 0.01, 1)}),
    "rescale": Simulator(lambda x, g, factor, filter: rescale(x, factor, filter),
                         {"factor": Knob(0.5, float, 0.01, 1), "filter": FILTER}),
    "crop": Simulator(lambda x, g, fraction, filter: crop(x, fraction, g, filter),
                      {"fraction": Knob(0.9, float, 0.05, 1), "filter": FILTER}),
    "webp": Simulator(lambda x, g, quality: codec_as_jpeg(x, "webp", quality), {"quality": Knob(80, int, 0, 100)}),
    "avif": Simulator(lambda x, g, quality: codec_as_jpeg(x, "avif", quality), {"quality": Knob(60, int, 0, 100)}),
    "platform": Simulator(lambda x, g, preset, photo_side: platform(x, preset, photo_side),
                          {"preset": Knob("instagram", tuple(PLATFORMS)),
                           "photo_side": Knob(2048, float, 1, 100_000)}),
    "bicubic_upscale_unsharp": Simulator(lambda x, g, scale, amount, sigma: bicubic_upscale_unsharp(x, scale, amount,
                                                                                                   sigma),
                                         {"scale": Knob(0.5, float, 0.01, 1), "amount": Knob(0.5, float, 0, 10),
                                          "sigma": Knob(1.0, float, 0.01, 20)}),
}
_SIMULATORS["sr_standin"] = _SIMULATORS["bicubic_upscale_unsharp"]

SIMULATOR_NAMES = tuple(_SIMULATORS)


def official_prelayer_config() -> list[dict[str, Any]]:
    """The official Prelayer list [JpegMask(50), JpegMask(70), GaussianBlur(2), Skipped()]:
    JPEG-Mask 50 % (the two entries are identical), 7×7 blur σ=2 25 %, identity 25 %."""
    return [
        {"name": "jpeg_mask", "p": 0.5},
        {"name": "blur", "p": 0.25, "sigma": 2.0, "kernel_size": 7},
        {"name": "identity", "p": 0.25},
    ]


def _check_value(knob: Knob, value: Any, where: str) -> None:
    """A fixed value, a [lo, hi] range of numbers or a list of choices."""
    if not isinstance(value, (list, tuple)):
        knob.check(value, where)
    elif isinstance(knob.kind, tuple):
        if not value:
            raise ValueError(f"{where}: an empty list of choices")
        for v in value:
            knob.check(v, where)
    else:
        if len(value) != 2 or not value[0] <= value[1]:
            raise ValueError(f"{where}: a range is [lo, hi] with lo <= hi, got {list(value)}")
        for v in value:
            knob.check(v, where)


class PreprocessSampler(torch.nn.Module):
    """forward(x01) -> (y, name): one transform drawn per call from `config` (default DEFAULT_CONFIG).

    A parameter given as [lo, hi] is drawn uniformly per call (integers for integer parameters); a choice given as a
    list is drawn uniformly among its items. Draws use `generator` if passed to forward, else the sampler's own
    generator seeded with `seed`.
    """

    def __init__(self, config: Optional[Sequence[dict[str, Any]]] = None, seed: Optional[int] = None):
        super().__init__()
        self.config = copy.deepcopy(list(DEFAULT_CONFIG if config is None else config))
        if not self.config:
            raise ValueError("preprocessing config: it is empty; give at least one transform with p > 0")
        probs = []
        for i, entry in enumerate(self.config):
            if not isinstance(entry, dict):
                raise ValueError(f"preprocessing config: entry {i} must be a mapping like {{name: diff_jpeg, p: 0.5}}"
                                 f", got {entry!r}")
            name = entry.get("name")
            if name not in _SIMULATORS:
                raise ValueError(
                    f"preprocessing config: entry {i} has unknown name {name!r}; "
                    f"known: {', '.join(SIMULATOR_NAMES)}"
                )
            knobs = _SIMULATORS[name].knobs
            extra = set(entry) - {"name", "p"} - set(knobs)
            if extra:
                raise ValueError(f"preprocessing config: entry {i} ({name}) has unknown keys {sorted(extra)}; "
                                 f"{name} takes {', '.join(knobs) or 'no parameters'}")
            for key, knob in knobs.items():
                if key in entry:
                    _check_value(knob, entry[key], f"preprocessing config: entry {i} ({name}) {key}")
            p = float(entry.get("p", 1.0))
            if not p >= 0:
                raise ValueError(f"preprocessing config: entry {i} ({name}) has negative p={p}")
            probs.append(p)
        total = sum(probs)
        if not total > 0:
            raise ValueError("preprocessing config: probabilities must sum to > 0, got " + str(probs))
        self.register_buffer("probs", torch.tensor(probs, dtype=torch.float64) / total, persistent=False)
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    @property
    def names(self) -> list[str]:
        return [e["name"] for e in self.config]

    @staticmethod
    def _draw(value: Any, knob: Knob, g: torch.Generator) -> Any:
        if not isinstance(value, (list, tuple)):
            return value
        if isinstance(knob.kind, tuple):
            return value[int(torch.randint(0, len(value), (1,), generator=g))]
        lo, hi = value
        if knob.kind is int:
            return int(torch.randint(int(lo), int(hi) + 1, (1,), generator=g))
        return float(lo) + (float(hi) - float(lo)) * float(torch.rand((1,), generator=g, dtype=torch.float64))

    def sample(self, generator: Optional[torch.Generator] = None) -> tuple[str, dict[str, Any]]:
        """Draw (name, parameters) for one batch."""
        g = generator or self.generator
        i = int(torch.multinomial(self.probs.cpu(), 1, generator=g))
        entry = self.config[i]
        knobs = _SIMULATORS[entry["name"]].knobs
        params = {k: self._draw(entry.get(k, knob.default), knob, g) for k, knob in knobs.items()}
        return entry["name"], params

    def forward(self, x01: torch.Tensor, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, str]:
        g = generator or self.generator
        name, params = self.sample(g)
        return _SIMULATORS[name].fn(x01, g, **params), name


def official_prelayer(seed: Optional[int] = None) -> PreprocessSampler:
    """Sampler with the official training list (JPEG-Mask 50 %, blur 7×7 σ=2 25 %, identity 25 %)."""
    return PreprocessSampler(official_prelayer_config(), seed=seed)
