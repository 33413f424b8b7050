"""The Robustness tab without Gradio: which transforms (re-encoding, platform uploads, filters, purification) the
protection survives, measured with the robustness matrix (``evaluation.robustness_matrix``), and the clean and
protected photo after JPEG side by side. What the numbers say in words is `robustness_text`'s. Surrogates are read
only from the folders the host allows."""
from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..common.budget import DEFAULT_BUDGET
from ..common.visualize import amplified_perturbation
from ..evaluation.robustness_matrix import (MatrixMethod, RobustnessMatrix, none_method, random_noise_method,
                                            robustness_matrix)
from ..io import save_image
from ..metrics.robustness import jpeg_robustness
from ..model.protector import Protector
from ..preprocess import Transform, TransformSpecError, parse
from .robustness_text import jpeg_markdown
from .settings import DEFAULT_MAX_PIXELS, UIError, UISettings
from .uploads import file_path, load_upload

# What the user ticks (label -> registry spec); the purification is offered only with a surrogate
PRESETS = {
    "JPEG at quality 75 (jpeg:75)": "jpeg:75",
    "Instagram upload, approximate (platform:instagram)": "platform:instagram",
    "Facebook upload, approximate (platform:facebook)": "platform:facebook",
    "X / Twitter upload, approximate (platform:x)": "platform:x",
    "WhatsApp, approximate (platform:whatsapp)": "platform:whatsapp",
    "Slight blur of 1 pixel (gauss:1)": "gauss:1",
    "DiffPure purification through the surrogate (diffpure:0.1,steps=10)": "diffpure:0.1,steps=10",
}
DEFAULT_PRESETS = ("JPEG at quality 75 (jpeg:75)", "Instagram upload, approximate (platform:instagram)",
                   "WhatsApp, approximate (platform:whatsapp)")
SPEC_HELP = "Write transforms like jpeg:75, platform:instagram, gauss:1 or resize:1080,side=long|jpeg:75."


@dataclass
class RobustnessResult:
    clean_jpeg_png: Path
    protected_jpeg_png: Path
    perturbation_png: Path
    markdown: str


_SURROGATES: dict[str, object] = {}
_SURROGATE_LOCK = threading.Lock()


def resolve_surrogate_path(text: str | None, s: UISettings) -> Path:
    """A local surrogate named by the user, accepted only inside `s.surrogate_roots()` (relative names are taken
    inside them). Outside them, missing and unreadable all get one answer, which reveals nothing about the server."""
    roots = [r.resolve() for r in s.surrogate_roots() if r.is_dir()]
    where = ", ".join(str(r) for r in s.surrogate_roots()) or "no folder is set"
    refused = UIError(f"No surrogate {text!r} in the surrogate folders ({where}). Put a diffusers folder or an SD "
                      "single-file checkpoint there and give its name.")
    if not text or not str(text).strip() or "\x00" in str(text):
        raise refused
    for root in roots:
        candidate = Path(text) if Path(text).is_absolute() else root / text
        with contextlib.suppress(OSError, ValueError):
            resolved = candidate.resolve()
            if resolved.is_relative_to(root) and resolved != root and resolved.exists():
                return resolved
    raise refused


def load_surrogate_cached(spec: str, device: str = "cpu"):
    """`tiny` (the built-in demo model) or a local diffusers folder / single-file checkpoint."""
    with _SURROGATE_LOCK:
        if spec not in _SURROGATES:
            try:
                from ..diffusion import load_surrogate
            except Exception as exc:  # noqa: BLE001 - a host's broken diffusers raises RuntimeError too
                raise UIError(f"The surrogate model needs diffusers, which cannot be imported here "
                              f"({type(exc).__name__}: {exc}). Install the diffusion extra "
                              "(pip install 'gapdiff[diffusion]') or choose surrogate 'none': the JPEG "
                              "comparison works without it.") from exc
            try:
                _SURROGATES[spec] = load_surrogate(spec).to(device)
            except (OSError, ValueError, RuntimeError) as exc:
                raise UIError(f"Could not load the surrogate {spec!r}: {exc}") from exc
        return _SURROGATES[spec]


def preset_choices(surrogate_chosen: bool) -> list[str]:
    """The preset labels to offer: the purification needs a surrogate, so it is offered only with one."""
    return [label for label, spec in PRESETS.items() if surrogate_chosen or not parse(spec).needs_surrogate]


def chosen_transforms(labels: Sequence[str] | None, text: str | None,
                      surrogate_chosen: bool) -> tuple[list[Transform], list[str]]:
    """The ticked presets then the typed specs (one per line or separated by ';'), parsed; and the specs left out
    because they need a surrogate and none is chosen. A bad spec is a UIError naming it."""
    specs = []
    for label in labels or ():
        if label not in PRESETS:
            raise UIError(f"Unknown transform choice {label!r}; reload the page.")
        specs.append(PRESETS[label])
    specs += [part.strip() for part in re.split(r"[;\n]", text or "") if part.strip()]
    chosen, skipped = [], []
    for spec in specs:
        try:
            t = parse(spec)
        except TransformSpecError as exc:
            raise UIError(f"{exc}. {SPEC_HELP}") from exc
        if t.needs_surrogate and not surrogate_chosen:
            skipped.append(t.spec)
        elif t.spec not in (c.spec for c in chosen):
            chosen.append(t)
    return chosen, skipped


def measure_survival(photos: Sequence[torch.Tensor], transforms: Sequence[Transform], surrogate, *,
                     protector: Protector | None = None, protected: torch.Tensor | None = None,
                     budget: float = DEFAULT_BUDGET, device: str = "cpu",
                     measure: Optional[Callable[[torch.Tensor], float]] = None,
                     progress: Optional[Callable[[int, int, object], None]] = None) -> tuple[RobustnessMatrix, str]:
    """The robustness matrix of the protection (the generator's, or one uploaded protected photo for a single clean
    photo), the clean photo and the random-noise control over ``transforms``; returns it and the method's row name.
    The control has the protection's budget (for an uploaded pair: its largest change). ``measure``: the matrix's
    (default: the surrogate's denoising error)."""
    if protected is not None:
        if len(photos) != 1 or protected.shape != photos[0].shape:
            raise UIError("An uploaded protected photo is measured against one clean photo of the same size.")
        budget = max(1.0, float(((protected - photos[0]).abs() * 255).round().max()))
        method = MatrixMethod("your protected photo", lambda x, seed: protected.to(x.device), budget=budget)
    elif protector is not None:
        budget = protector.budget
        method = MatrixMethod("gap-diff", lambda x, seed: protector(x).to(x.device), demo=bool(protector.info.demo),
                              budget=budget)
    else:
        raise UIError("Upload the protected photo too, or choose a generator to protect the clean one.")
    methods = [method, none_method(), random_noise_method(budget)]
    try:
        matrix = robustness_matrix(list(photos), methods, transforms, surrogate=surrogate, measure=measure,
                                   budget=budget, examples=0, device=device, progress=progress)
    except ValueError as exc:  # no photo could be measured: each reason names the transform
        raise UIError(str(exc)) from exc
    return matrix, method.name


def robustness_check(clean_upload: str, protected: str | None, quality: int, out_dir: Path,
                     protector: Protector | None = None, budget: float = DEFAULT_BUDGET,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> RobustnessResult:
    """JPEG both the clean and the protected photo at `quality` and say, in words, how much of the perturbation is
    left. Full-resolution data stays in 8 bits."""
    clean = load_upload(Path(file_path(clean_upload)), max_pixels).rgb
    if isinstance(protected, (str, os.PathLike)):
        prot = load_upload(Path(file_path(protected)), max_pixels, "Protected photo").rgb
        if prot.shape != clean.shape:
            raise UIError(f"The protected photo is {prot.shape[1]}×{prot.shape[0]} but the clean one is "
                          f"{clean.shape[1]}×{clean.shape[0]}; upload the matching pair.")
    elif protector is not None:
        prot = protector.protect_uint8(clean)
        budget = protector.budget
    else:
        raise UIError("Upload the protected photo too, or choose a generator to protect the clean one.")
    if not 1 <= int(quality) <= 100:
        raise UIError(f"JPEG quality must be 1..100, not {quality}.")
    r = jpeg_robustness(clean, prot, int(quality))
    clean_jpeg_png = save_image(out_dir / f"clean_jpeg_q{quality}.png", r.clean_jpeg)
    protected_jpeg_png = save_image(out_dir / f"protected_jpeg_q{quality}.png", r.protected_jpeg)
    vis, gain = amplified_perturbation(r.clean_jpeg, r.protected_jpeg, budget)
    pert_png = save_image(out_dir / f"perturbation_after_jpeg_x{gain:.0f}.png", vis)
    return RobustnessResult(clean_jpeg_png, protected_jpeg_png, pert_png, jpeg_markdown(r, int(quality), gain))
