"""The Robustness tab without Gradio: JPEG a clean photo and its protected version the same way and measure how
much of the perturbation (and, with a surrogate, of its adversarial effect) survives; surrogates are read only
from the folders the host allows."""
from __future__ import annotations

import contextlib
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..common.budget import DEFAULT_BUDGET
from ..common.visualize import amplified_perturbation
from ..io import save_image
from ..metrics.directions import format_value
from ..metrics.robustness import jpeg_robustness
from ..model.protector import Protector
from .settings import DEFAULT_MAX_PIXELS, UIError, UISettings
from .uploads import file_path, load_upload


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


def robustness_check(clean_upload: str, protected: str | None, quality: int, out_dir: Path,
                     protector: Protector | None = None, surrogate=None, budget: float = DEFAULT_BUDGET,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> RobustnessResult:
    """JPEG both the clean and the protected photo at `quality`; measure how much of the perturbation (and, with
    a surrogate, of the adversarial effect) survives. Full-resolution data stays in 8 bits."""
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
    r = jpeg_robustness(clean, prot, int(quality), surrogate)
    before, after = r.before, r.after
    clean_jpeg_png = save_image(out_dir / f"clean_jpeg_q{quality}.png", r.clean_jpeg)
    protected_jpeg_png = save_image(out_dir / f"protected_jpeg_q{quality}.png", r.protected_jpeg)
    vis, gain = amplified_perturbation(r.clean_jpeg, r.protected_jpeg, budget)
    pert_png = save_image(out_dir / f"perturbation_after_jpeg_x{gain:.0f}.png", vis)
    lines = [f"JPEG quality {quality}: both photos compressed the same way (Pillow, 4:2:0).", "",
             "| | before JPEG | after JPEG |", "|---|---|---|",
             f"| max change (grey levels) | {before.max:.0f} | {after.max:.0f} |",
             f"| RMS change (grey levels) | {before.rms:.2f} | {after.rms:.2f} |",
             f"| PSNR vs clean (dB) | {format_value(before.psnr, 2)} | {format_value(after.psnr, 2)} |",
             "", f"Perturbation energy kept through JPEG: **{100 * r.energy_kept:.0f}%** "
                 f"(correlation with the original perturbation {r.correlation:.2f})."]
    if r.effect is not None:
        e = r.effect
        name = getattr(surrogate, "name", "surrogate")
        demo = " (DEMO model: the number shows the computation, not real protection)" \
            if getattr(surrogate, "is_demo", False) else ""
        lines += ["", f"Adversarial effect on **{name}**{demo} — the surrogate's denoising loss, higher means the "
                      "model learns the photo worse:", "",
                  "| | clean | protected | effect |", "|---|---|---|---|",
                  f"| before JPEG | {e.clean:.5f} | {e.protected:.5f} | {e.before:+.5f} |",
                  f"| after JPEG | {e.clean_jpeg:.5f} | {e.protected_jpeg:.5f} | {e.after:+.5f} |", "",
                  "Share of the adversarial effect that survives JPEG: " + (
                      f"**{100 * e.share:.0f}%**." if math.isfinite(e.share) else
                      "n/a (no adversarial effect before JPEG to compare with).")]
    return RobustnessResult(clean_jpeg_png, protected_jpeg_png, pert_png, "\n".join(lines))
