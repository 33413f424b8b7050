"""The robustness matrix: protection method × transform, how much of each protection's adversarial effect survives
what a platform or an attacker does to the photo (issue 25, item 3).

For each photo (one at a time, so memory follows one photo), each method protects it and the protected and the clean
photo go through each transform with the same seed (a transform that changes the size changes both). The **effect
retained** is the surrogate's mean denoising error on the transformed protected photo minus that on the transformed
clean photo (:class:`DenoisingMeasure`). Means over photos carry 95% percentile-bootstrap intervals over photos, all
cells drawing the same resamples, so the **share retained** (effect after the transform / effect without it) and the
**margin over the random-noise control** (paired per photo) are intervals too. The PSNR of the transformed protected
photo against the transformed clean one says how visible the remaining perturbation is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..attack.dreambooth import load_photos
from ..common.progress import ProgressFn
from ..common.prompts import INSTANCE_PROMPT
from ..common.seeds import derive_seed
from ..common.visualize import amplified_perturbation
from ..io import ImageError, batch_to_uint8, load_image
from ..losses import VAL_SEED, fixed_timesteps, mean_denoising_error
from ..metrics.fidelity import psnr
from ..preprocess import Transform, parse
from ..training.validation import random_sign_noise

PHOTO_STREAM = (1_000_033, 1)  # the seed of photo i's transforms and noise control: (seed, i)
RESAMPLES = 2000
LEVEL = 0.95
TOY_RESOLUTION = 128  # the toy model's measuring resolution: its 512 px says nothing more and costs 16 times more
SURVIVES_SHARE = 0.5  # "survives": the share retained is at least this, with 95% confidence
VERDICTS = {
    "survives": "survives (the effect kept is clearly above the random-noise control, at least half of it)",
    "weakened": "weakened (still clearly above the random-noise control, but much of the effect is lost)",
    "removed": "removed (no different from random noise)",
    "no-effect": "no effect (not above random noise even without a transform)",
    "one-photo": "uncertain (one photo: no interval)",
    "baseline": "baseline (the clean photo: no protection)",
    "control": "control (random noise at the same budget)",
}
TOY = "n/a (toy model)"


# ---------------------------------------------------------------- what is compared
@dataclass(frozen=True)
class MatrixMethod:
    """A row of the matrix: ``protect(photo, seed)`` maps a 1×3×H×W photo in [0, 1] to its protected version.
    ``role``: ``protection``, ``baseline`` (``none``) or ``control`` (random noise at the same budget)."""

    name: str
    protect: Callable[[torch.Tensor, int], torch.Tensor]
    role: str = "protection"
    demo: bool = False  # made with a generator trained on a toy model
    budget: Optional[float] = None  # grey levels, where the method has one


def none_method() -> MatrixMethod:
    """The clean photo itself: its effect is zero by construction (a check of the pairing)."""
    return MatrixMethod("none", lambda x, seed: x, "baseline")


def random_noise_method(budget: float) -> MatrixMethod:
    """Uniform ±budget sign noise on every pixel, seeded per photo (``training.validation.random_sign_noise``): what
    a perturbation of the same size does without being adversarial."""
    return MatrixMethod("random-noise", lambda x, seed: random_sign_noise(x, budget, seed), "control",
                        budget=float(budget))


def gap_diff_method(generator, budget: Optional[float] = None, device: str = "cpu") -> MatrixMethod:
    """GAP-Diff with a generator checkpoint (or a loaded generator): one forward pass of :class:`Protector` at
    ``budget`` (default the generator's)."""
    from ..model.protector import Protector

    protector = Protector(generator, budget=budget, device=device)
    return MatrixMethod("gap-diff", lambda x, seed: protector(x).to(x.device), demo=bool(protector.info.demo),
                        budget=protector.budget)


def registry_method(spec: str, surrogate, budget: float) -> MatrixMethod:
    """An iterative method of ``protections`` (``aspl``, ``mist:tiny``, ...) against the surrogate, one photo at a
    time; ``NAME:tiny`` picks its few-step schedule. These take minutes per photo on a real model."""
    from ..protections import get_protection

    name, _, schedule = spec.partition(":")
    method = get_protection(name, surrogate, schedule=schedule or "default", budget=budget)
    return MatrixMethod(spec, lambda x, seed: method.protect(x).to(x.device), budget=float(budget))


class DenoisingMeasure:
    """The surrogate's mean denoising error on one photo as a DreamBooth attacker sees it (short side resized to
    ``resolution``, default the surrogate's or 128 px for the toy model, centre crop): ``losses.mean_denoising_error`` over ``timesteps`` evenly
    spaced timesteps (``losses.fixed_timesteps``), the same seeded noise for every photo, the instance prompt, the
    VAE's posterior mean. Higher means the model learns the photo worse."""

    def __init__(self, surrogate, timesteps: int = 8, seed: int = VAL_SEED, resolution: Optional[int] = None):
        self.surrogate, self.seed = surrogate, int(seed)
        self.resolution = int(resolution or (TOY_RESOLUTION if surrogate.is_demo else surrogate.resolution))
        if self.resolution < 8 or self.resolution % surrogate.latent_scale:
            raise ValueError(f"the measuring resolution must be a multiple of {surrogate.latent_scale}, "
                             f"got {self.resolution}")
        self.timesteps = fixed_timesteps(int(timesteps), surrogate.scheduler.config.num_train_timesteps)
        with torch.no_grad():
            self.prompt = surrogate.encode_prompt([INSTANCE_PROMPT])

    def __call__(self, photo: torch.Tensor) -> float:
        s = self.surrogate
        x = load_photos(photo.float().cpu(), self.resolution).to(s.device, s.dtype)
        return float(mean_denoising_error(s, x, self.prompt, self.timesteps, seed=self.seed, sample_latents=False)[0])


# ---------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Interval:
    """A mean over photos and its 95% percentile-bootstrap interval (nan where undefined)."""

    mean: float
    low: float
    high: float

    def above(self, value: float = 0.0) -> bool:
        """The whole interval lies above ``value``."""
        return self.low > value


def bootstrap_resamples(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``resamples`` × ``n`` photo indices drawn with replacement (seeded): the resamples every cell shares."""
    return np.random.default_rng(seed).integers(0, n, size=(int(resamples), n))


def _percentiles(stats: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def mean_interval(values: Sequence[float], resamples: np.ndarray) -> Interval:
    """The mean of ``values`` (one per photo) with the percentile interval of its bootstrap means."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all():  # e.g. the PSNR of identical photos: infinite
        m = float(v.mean())
        return Interval(m, m, m)
    return Interval(float(v.mean()), *_percentiles(v[resamples].mean(axis=1)))


def ratio_interval(numerator: Sequence[float], denominator: Sequence[float], resamples: np.ndarray) -> Interval:
    """mean(numerator) / mean(denominator) with its interval from the same resamples (the ratio recomputed in each);
    nan when the denominator's mean is not positive; resamples whose denominator is not positive are left out."""
    num, den = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    if not den.mean() > 0:
        return Interval(math.nan, math.nan, math.nan)
    dm = den[resamples].mean(axis=1)
    ratios = np.where(dm > 0, num[resamples].mean(axis=1) / np.where(dm > 0, dm, 1.0), np.nan)
    return Interval(float(num.mean() / den.mean()), *_percentiles(ratios))


# ---------------------------------------------------------------- the matrix
@dataclass
class Example:
    """One photo after one transform, as thumbnails (H×W×3 uint8): clean, protected by the first protection, and
    the amplified difference of the two (``common.visualize.amplified_perturbation``)."""

    photo: str
    transform: str
    clean: np.ndarray
    protected: np.ndarray
    difference: np.ndarray


@dataclass
class Cell:
    """One (method, transform): the effect retained, its share of the untransformed effect, its margin over the
    random-noise control, the PSNR of the transformed protected photo against the transformed clean one, and the
    verdict (a key of :data:`VERDICTS`)."""

    method: str
    transform: str
    effect: Interval
    share: Interval
    over_control: Interval
    psnr: Interval
    verdict: str


@dataclass
class RobustnessMatrix:
    """Cells by (method, transform), per-photo numbers (``errors[method][transform]``: the denoising error of each
    photo, ``"clean"`` for the clean photo; ``psnr`` likewise), the photos measured and those skipped (name ->
    reason), the settings, whether the surrogate is a toy model, and the example thumbnails."""

    methods: list[MatrixMethod]
    transforms: list[str]
    photos: list[str]
    skipped: dict[str, str]
    errors: dict[str, dict[str, list[float]]]
    psnr: dict[str, dict[str, list[float]]]
    cells: dict[tuple[str, str], Cell]
    settings: dict
    toy: bool
    examples: list[Example] = field(default_factory=list)

    def cell(self, method: str, transform: str) -> Cell:
        return self.cells[(method, transform)]

    def verdict_text(self, cell: Cell) -> str:
        """The words shown for a cell; on a toy surrogate the verdict is n/a and the reading is labelled a demo."""
        words = VERDICTS[cell.verdict]
        if self.toy and cell.verdict not in ("baseline", "control"):
            return f"{TOY}; demo reading: {words}"
        return words


def parse_transforms(specs: Sequence[Union[str, Transform]], surrogate=None) -> list[Transform]:
    """``none`` first (the untransformed reference), then each spec once, parsed up front so a bad spec fails
    before any work (``TransformSpecError`` names it)."""
    out: list[Transform] = [parse("none")]
    for spec in specs:
        t = parse(spec) if isinstance(spec, str) else spec
        if t.needs_surrogate and surrogate is None:
            raise ValueError(f"image transform {t.spec!r} needs the surrogate diffusion model")
        if t.spec not in (o.spec for o in out):
            out.append(t)
    return out


def verdict(role: str, n: int, over_control: Interval, share: Interval, untransformed_over_control: Interval) -> str:
    """The key of :data:`VERDICTS` for a cell, from its intervals: its margin over the random-noise control, its
    share of the untransformed effect, and the untransformed margin over the control."""
    if role != "protection":
        return role
    if n < 2:
        return "one-photo"
    if not untransformed_over_control.above(0):
        return "no-effect"
    if not over_control.above(0):
        return "removed"
    return "survives" if share.low >= SURVIVES_SHARE else "weakened"


def _thumbnail(rgb: np.ndarray, side: int, nearest: bool = False) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(rgb)
    im.thumbnail((side, side), Image.NEAREST if nearest else Image.LANCZOS)
    return np.asarray(im)


def _example(name: str, spec: str, clean: torch.Tensor, protected: torch.Tensor, budget: float,
             side: int) -> Example:
    c, p = batch_to_uint8(clean)[0], batch_to_uint8(protected)[0]
    diff, _ = amplified_perturbation(c, p, budget)  # nearest keeps each shown pixel's true amplitude
    return Example(name, spec, _thumbnail(c, side), _thumbnail(p, side), _thumbnail(diff, side, nearest=True))


def _photo_name(photo, i: int) -> str:
    return f"photo {i}" if isinstance(photo, torch.Tensor) else str(photo)


def _load(photo, max_side: Optional[int]) -> torch.Tensor:
    """A photo as 1×3×H×W in [0, 1], its long side shrunk to ``max_side`` (antialiased, kept 8-bit) when larger."""
    if isinstance(photo, torch.Tensor):
        x = (photo if photo.dim() == 4 else photo.unsqueeze(0)).float()
    else:
        x = load_image(photo).tensor()
    h, w = x.shape[-2:]
    if max_side and max(h, w) > max_side:
        size = (max(1, round(h * max_side / max(h, w))), max(1, round(w * max_side / max(h, w))))
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        x = (x.clamp(0, 1) * 255).round() / 255
    return x


@dataclass
class _PhotoResult:
    errors: dict[str, dict[str, float]]  # "clean" or method -> transform -> denoising error
    psnr: dict[str, dict[str, float]]
    examples: list[Example]


def _measure_photo(clean: torch.Tensor, name: str, seed: int, methods, steps, surrogate, measure, budget: float,
                   example_side: int, with_examples: bool, progress: Callable[[int], None]) -> _PhotoResult:
    protected = {m.name: m.protect(clean, seed) for m in methods}
    first_protection = next((m for m in methods if m.role == "protection"), None)
    out = _PhotoResult({"clean": {}, **{m.name: {} for m in methods}}, {m.name: {} for m in methods}, [])
    for j, t in enumerate(steps):
        tc = t(clean, seed=seed, surrogate=surrogate)
        out.errors["clean"][t.spec] = measure(tc)
        for m in methods:
            tp = t(protected[m.name], seed=seed, surrogate=surrogate)
            if tp.shape != tc.shape:
                raise ValueError(f"{t.spec} gave {tuple(tp.shape[-2:])} for the {m.name} photo but "
                                 f"{tuple(tc.shape[-2:])} for the clean one")
            same = torch.equal(tp, tc)  # e.g. 'none', or a transform that erases the image: nothing to measure
            out.errors[m.name][t.spec] = out.errors["clean"][t.spec] if same else measure(tp)
            out.psnr[m.name][t.spec] = float(psnr(tp.cpu(), tc.cpu())[0])
            if m is first_protection and with_examples:
                out.examples.append(_example(name, t.spec, tc, tp, budget, example_side))
        progress(j + 1)
    return out


def robustness_matrix(photos: Sequence[Union[str, Path, torch.Tensor]], methods: Sequence[MatrixMethod],
                      transforms: Sequence[Union[str, Transform]], *, surrogate=None,
                      measure: Optional[Callable[[torch.Tensor], float]] = None, budget: float = 8.0,
                      seed: int = 0, resamples: int = RESAMPLES, max_side: Optional[int] = None, examples: int = 2,
                      example_side: int = 192, device: str = "cpu", progress: ProgressFn = None) -> RobustnessMatrix:
    """Measure every method under every transform on ``photos`` (paths or 1×3×H×W tensors), one photo at a time.

    ``measure(photo) -> float`` is the denoising error (default :class:`DenoisingMeasure` of ``surrogate``, which the
    purifications also use). ``max_side``: shrink larger photos first (as an upload would; faster). A photo that
    cannot be read, protected or transformed is skipped with its reason, so every cell is measured on the same
    photos. ``examples``: how many photos give example thumbnails. ``progress(done, total, None)`` after each
    (photo, transform). Photo i's transforms and noise control draw from one seed derived from ``seed`` and i."""
    if not methods:
        raise ValueError("the robustness matrix needs at least one method")
    steps = parse_transforms(transforms, surrogate)
    measure = measure or DenoisingMeasure(surrogate)
    specs, names = [t.spec for t in steps], ["clean"] + [m.name for m in methods]
    errors = {n: {s: [] for s in specs} for n in names}
    psnrs = {m.name: {s: [] for s in specs} for m in methods}
    measured, skipped, shown = [], {}, []
    total = len(photos) * len(steps)
    for i, photo in enumerate(photos):
        name = _photo_name(photo, i)

        def step(done: int, i=i) -> None:
            if progress is not None:
                progress(i * len(steps) + done, total, None)
        try:
            result = _measure_photo(_load(photo, max_side).to(device), name, derive_seed(PHOTO_STREAM, seed, i),
                                    methods, steps, surrogate, measure, budget, example_side,
                                    len(measured) < examples, step)
        except (ImageError, ValueError, OSError) as exc:
            skipped[name] = str(exc)
            step(len(steps))
            continue
        measured.append(name)
        shown.extend(result.examples)
        for n in names:
            for s in specs:
                errors[n][s].append(result.errors[n][s])
                if n != "clean":
                    psnrs[n][s].append(result.psnr[n][s])
    if not measured:
        raise ValueError("no photo could be measured: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    settings = dict(budget=float(budget), seed=int(seed), resamples=int(resamples), level=LEVEL,
                    interval="percentile bootstrap over photos", survives_share=SURVIVES_SHARE, max_side=max_side)
    if isinstance(measure, DenoisingMeasure):
        settings.update(surrogate=getattr(surrogate, "name", str(surrogate)), prompt=INSTANCE_PROMPT,
                        resolution=measure.resolution, timesteps=measure.timesteps.tolist(), noise_seed=measure.seed)
    cells = _cells(methods, specs, errors, psnrs, bootstrap_resamples(len(measured), resamples, seed))
    return RobustnessMatrix(list(methods), specs, measured, skipped, errors, psnrs, cells, settings,
                            toy=bool(getattr(surrogate, "is_demo", False)), examples=shown)


def _cells(methods, specs, errors, psnrs, resamples) -> dict[tuple[str, str], Cell]:
    """Every cell's intervals from the per-photo numbers; ``specs[0]`` is the untransformed reference."""
    clean = {s: np.asarray(errors["clean"][s]) for s in specs}
    effect = {m.name: {s: np.asarray(errors[m.name][s]) - clean[s] for s in specs} for m in methods}
    control = next((m.name for m in methods if m.role == "control"), None)
    out = {}
    for m in methods:
        def margin(s, m=m):
            return mean_interval(effect[m.name][s] - (effect[control][s] if control else 0.0), resamples)
        untransformed = margin(specs[0])
        for s in specs:
            over = margin(s)
            share = ratio_interval(effect[m.name][s], effect[m.name][specs[0]], resamples)
            out[(m.name, s)] = Cell(m.name, s, mean_interval(effect[m.name][s], resamples), share, over,
                                    mean_interval(psnrs[m.name][s], resamples),
                                    verdict(m.role, resamples.shape[1], over, share, untransformed))
    return out
