"""The one transform registry: spec strings -> callables on photos, for evaluation, robustness, the app and nodes.

``parse("resize:1080,side=long|jpeg:75")`` returns a :class:`Transform`: call it on float32 B×3×H×W in [0, 1]
(``t(images, seed=0, surrogate=None)``) to get the photos an attacker would receive, stored as 8-bit values. Steps
of a ``|`` chain run in order, each one's output rounded to 8 bits as a saved file would be. Only geometry
(``resize``, ``crop``, ``noisy-upscale``'s ``output=x4``) changes the size. Random steps draw from ``seed`` (each
step of a chain from its own derived seed), so a spec and a seed fix the result. Purifications need the surrogate
diffusion model (``needs_surrogate``). ``available()`` lists every transform with its usage and one-line help.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..common.seeds import derive_seed
from . import codecs, filters, geometry, platforms, purification, upscaling
from .pixels import quantize_8bit
from .specs import TransformSpecError, TransformType, parse_args, render_step

CHAIN_STEP = (1_000_003, 1)  # seed of step i of a chain: (seed, i)
REGISTRY: dict[str, TransformType] = {
    e.name: e for family in (filters, codecs, geometry, platforms, purification, upscaling) for e in family.ENTRIES}


class Transform:
    """A parsed transform: ``spec`` (normalised text), ``name``, ``needs_surrogate``; call it on photos."""

    spec: str
    name: str
    needs_surrogate: bool

    def __call__(self, images: torch.Tensor, seed: int = 0, surrogate=None) -> torch.Tensor:
        _check_images(images, self.spec)
        if self.needs_surrogate and surrogate is None:
            raise ValueError(f"image transform {self.spec!r} needs the surrogate diffusion model: pass surrogate= "
                             f"(a gapdiff_core.diffusion.Surrogate)")
        with torch.no_grad():
            return self._run(images.to(torch.float32), int(seed), surrogate)

    def _run(self, images: torch.Tensor, seed: int, surrogate) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Transform({self.spec!r})"


@dataclass(frozen=True, repr=False)
class Step(Transform):
    """One registry entry with its parameter values."""

    entry: TransformType
    given: tuple[tuple[str, object], ...]  # the values written in the spec

    @property
    def spec(self) -> str:
        return render_step(self.entry, dict(self.given))

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def needs_surrogate(self) -> bool:
        return self.entry.needs_surrogate

    @property
    def params(self) -> dict:
        """Every parameter's value: the defaults completed by those written in the spec."""
        return {**{p.name: p.default for p in self.entry.params}, **dict(self.given)}

    def _run(self, images: torch.Tensor, seed: int, surrogate) -> torch.Tensor:
        kwargs = self.params
        if self.entry.random:
            kwargs["seed"] = seed
        if self.entry.needs_surrogate:
            kwargs["surrogate"] = surrogate
        return quantize_8bit(self.entry.fn(images, **kwargs))


@dataclass(frozen=True, repr=False)
class Chain(Transform):
    """Steps applied in order; ``spec`` is the text it was parsed from, normalised (a platform keeps its name)."""

    steps: tuple[Transform, ...]
    label: Optional[str] = None  # "platform:instagram" for a named chain

    @property
    def spec(self) -> str:
        return self.label or "|".join(s.spec for s in self.steps)

    @property
    def name(self) -> str:
        return self.label.partition(":")[0] if self.label else "|".join(s.name for s in self.steps)

    @property
    def needs_surrogate(self) -> bool:
        return any(s.needs_surrogate for s in self.steps)

    def _run(self, images: torch.Tensor, seed: int, surrogate) -> torch.Tensor:
        for i, step in enumerate(self.steps):
            images = step._run(images, derive_seed(CHAIN_STEP, seed, i), surrogate)
        return images


def parse(spec: str) -> Transform:
    """``"jpeg:75"``, ``"resize:1080,side=long|jpeg:75"``, ``"platform:instagram"``, ``"diffpure:0.1"`` -> a
    :class:`Transform`. Names and choices are case-insensitive. Raises :class:`TransformSpecError` (a
    ``ValueError``) naming the spec and the problem: unknown name, bad or out-of-range value."""
    if not isinstance(spec, str) or not spec.strip():
        raise TransformSpecError(str(spec), "empty spec; try one of " + ", ".join(REGISTRY))
    parts = [p.strip() for p in spec.split("|")]
    if any(not p for p in parts):
        raise TransformSpecError(spec, "empty step in the chain (two '|' in a row, or one at an end)")
    steps = [_parse_step(p, spec) for p in parts]
    if len(steps) == 1:
        return steps[0]
    flat = tuple(s for step in steps for s in (step.steps if isinstance(step, Chain) else (step,)))
    return Chain(flat)


def _parse_step(text: str, whole: str) -> Transform:
    name, _, args = text.partition(":")
    name = name.strip().lower()
    entry = REGISTRY.get(name)
    if entry is None:
        raise TransformSpecError(whole, f"unknown transform {name!r}; known: {', '.join(REGISTRY)}")
    given = parse_args(entry, args, whole)
    missing = [p.name for p in entry.params if p.default is None and p.name not in given]
    if missing:
        raise TransformSpecError(whole, f"{entry.name} needs {', '.join(missing)}: {entry.usage()}")
    if entry.expand is not None:
        inner = parse(entry.expand(given))
        return Chain(inner.steps if isinstance(inner, Chain) else (inner,), label=render_step(entry, given))
    step = Step(entry, tuple(given.items()))
    if entry.check is not None:
        entry.check(step.params, whole)
    return step


def apply(spec: str, images: torch.Tensor, seed: int = 0, surrogate=None) -> torch.Tensor:
    """``parse(spec)(images, seed=seed, surrogate=surrogate)``."""
    return parse(spec)(images, seed=seed, surrogate=surrogate)


@dataclass(frozen=True)
class TransformInfo:
    """What a user interface shows about a transform."""

    name: str
    usage: str
    help: str
    source: str
    needs_surrogate: bool


def available() -> list[TransformInfo]:
    """Every registered transform, in registry order (filters, codecs, geometry, platforms, purifications)."""
    return [TransformInfo(e.name, e.usage(), e.help, e.source(), e.needs_surrogate) for e in REGISTRY.values()]


def help_text() -> str:
    """One line per transform (``usage  help``), for ``--help`` texts and tooltips."""
    rows = available()
    width = max(len(r.usage) for r in rows)
    return "\n".join(f"{r.usage:<{width}}  {r.help}{' (needs the surrogate)' if r.needs_surrogate else ''}"
                     for r in rows)


def _check_images(images, spec: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 \
            or not images.is_floating_point():
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"image transform {spec!r}: expected float images B×3×H×W in [0, 1], got {got}")
    if images.numel() and torch.isnan(images).any():
        raise ValueError(f"image transform {spec!r}: the images contain NaN values")
