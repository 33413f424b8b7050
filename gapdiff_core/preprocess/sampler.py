"""PreprocessSampler: picks ONE simulator per batch (like the official Prelayer), reproducibly."""
from __future__ import annotations

import copy
from typing import Any, Callable, Optional, Sequence

import torch

from .differentiable_jpeg import diff_jpeg
from .jpeg_masking import jpeg_mask01
from .simulators import bicubic_upscale_unsharp, gaussian_blur, gaussian_noise, quantize, resize_down_up

DEFAULT_CONFIG: list[dict[str, Any]] = [
    {"name": "jpeg_mask", "p": 0.25},
    {"name": "diff_jpeg", "p": 0.25, "quality": [30, 90]},
    {"name": "blur", "p": 0.25, "sigma": 2.0, "kernel_size": 7},
    {"name": "identity", "p": 0.25},
]

# name -> (function(x, generator, **params), allowed params with defaults, params drawn as integers)
_SIMULATORS: dict[str, tuple[Callable, dict[str, Any], set[str]]] = {
    "identity": (lambda x, g: x, {}, set()),
    "jpeg_mask": (lambda x, g: jpeg_mask01(x), {}, set()),
    "diff_jpeg": (lambda x, g, quality: diff_jpeg(x, quality), {"quality": 75}, {"quality"}),
    "blur": (lambda x, g, sigma, kernel_size: gaussian_blur(x, sigma, kernel_size),
             {"sigma": 2.0, "kernel_size": 7}, {"kernel_size"}),
    "noise": (lambda x, g, std: gaussian_noise(x, std, g), {"std": 0.05}, set()),
    "quantize": (lambda x, g, levels: quantize(x, levels), {"levels": 64}, {"levels"}),
    "resize": (lambda x, g, scale: resize_down_up(x, scale), {"scale": 0.5}, set()),
    "bicubic_upscale_unsharp": (lambda x, g, scale, amount, sigma: bicubic_upscale_unsharp(x, scale, amount, sigma),
                                {"scale": 0.5, "amount": 0.5, "sigma": 1.0}, set()),
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


class PreprocessSampler(torch.nn.Module):
    """forward(x01) -> (y, name): one transform drawn per call from `config` (default DEFAULT_CONFIG).

    A parameter given as [lo, hi] is drawn uniformly per call (integers for quality, kernel_size, levels).
    Draws use `generator` if passed to forward, else the sampler's own generator seeded with `seed`.
    """

    def __init__(self, config: Optional[Sequence[dict[str, Any]]] = None, seed: Optional[int] = None):
        super().__init__()
        self.config = copy.deepcopy(list(DEFAULT_CONFIG if config is None else config))
        if not self.config:
            raise ValueError("preprocessing config: it is empty; give at least one transform with p > 0")
        probs = []
        for i, entry in enumerate(self.config):
            name = entry.get("name")
            if name not in _SIMULATORS:
                raise ValueError(
                    f"preprocessing config: entry {i} has unknown name {name!r}; "
                    f"known: {', '.join(SIMULATOR_NAMES)}"
                )
            extra = set(entry) - {"name", "p"} - set(_SIMULATORS[name][1])
            if extra:
                raise ValueError(f"preprocessing config: entry {i} ({name}) has unknown keys {sorted(extra)}")
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

    def _draw(self, value: Any, integer: bool, g: torch.Generator) -> Any:
        if isinstance(value, (list, tuple)):
            lo, hi = value
            if integer:
                return int(torch.randint(int(lo), int(hi) + 1, (1,), generator=g))
            return float(lo) + (float(hi) - float(lo)) * float(torch.rand((1,), generator=g, dtype=torch.float64))
        return value

    def sample(self, generator: Optional[torch.Generator] = None) -> tuple[str, dict[str, Any]]:
        """Draw (name, parameters) for one batch."""
        g = generator or self.generator
        i = int(torch.multinomial(self.probs.cpu(), 1, generator=g))
        entry = self.config[i]
        _, defaults, ints = _SIMULATORS[entry["name"]]
        params = {k: self._draw(entry.get(k, v), k in ints, g) for k, v in defaults.items()}
        return entry["name"], params

    def forward(self, x01: torch.Tensor, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, str]:
        g = generator or self.generator
        name, params = self.sample(g)
        return _SIMULATORS[name][0](x01, g if x01.device.type == "cpu" else None, **params), name


def official_prelayer(seed: Optional[int] = None) -> PreprocessSampler:
    """Sampler with the official training list (JPEG-Mask 50 %, blur 7×7 σ=2 25 %, identity 25 %)."""
    return PreprocessSampler(official_prelayer_config(), seed=seed)
