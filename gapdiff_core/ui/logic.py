"""What the UI does, without Gradio: list generators, protect uploaded photos into lossless PNGs, check JPEG
robustness, evaluate generated photos. Every failure a user can cause raises `UIError` with a readable message.

Everything shown or downloaded is a PNG written here by `imageio.save_image` (lossless, metadata stripped): the UI
passes file paths to Gradio, which serves them byte for byte (it re-encodes only arrays and PIL images).
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import torch

from ..checkpoint import CheckpointError, GeneratorInfo, load_generator
from ..imageio import ImageError, load_image, save_image, to_uint8
from ..metrics.fidelity import psnr, ssim
from ..protect import MODES, Protector, protection_stats

GENERATOR_SUFFIXES = (".safetensors", ".pth", ".pt")
DEMO_TAG = "  [DEMO: protects nothing real]"
DEMO_WARNING = ("**DEMO generator**: it was trained against a toy model and protects nothing real. "
                "Use these outputs to see how the tool works, not to protect photos.")
OUTPUT_ROOT = Path(tempfile.gettempdir()) / "gapdiff-ui"
OUTPUT_MAX_AGE_S = 6 * 3600


class UIError(ValueError):
    """A problem the user can fix; the message is shown as is."""


@dataclass
class UISettings:
    """Host-provided settings. The A1111 tab passes a callable returning fresh settings on every request."""

    models_dir: str | os.PathLike | None = None
    device: str = "auto"
    precision: str = "auto"
    default_budget: float = 8.0
    max_photos: int = 64
    work_lock: Callable[[], ContextManager] = contextlib.nullcontext  # e.g. A1111's queue_lock


# ------------------------------------------------------------------ generators


@dataclass
class GeneratorEntry:
    choice: str  # what the dropdown shows (and returns)
    path: Path
    info: GeneratorInfo | None
    error: str = ""

    @property
    def demo(self) -> bool:
        return bool(self.info and self.info.demo)


_INFO_CACHE: dict[tuple, GeneratorInfo | str] = {}


def _info_of(path: Path) -> GeneratorInfo | str:
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _INFO_CACHE:
        try:
            _INFO_CACHE[key] = load_generator(path).info
        except CheckpointError as exc:
            _INFO_CACHE[key] = str(exc)
    return _INFO_CACHE[key]


def list_generators(models_dir: str | os.PathLike | None) -> list[GeneratorEntry]:
    """Generator checkpoints in `models_dir` (not recursive), demo ones labelled in their choice string."""
    if not models_dir or not Path(models_dir).is_dir():
        return []
    entries = []
    for path in sorted(Path(models_dir).iterdir()):
        if path.suffix.lower() not in GENERATOR_SUFFIXES or not path.is_file():
            continue
        info = _info_of(path)
        if isinstance(info, str):
            entries.append(GeneratorEntry(f"{path.name}  [unreadable]", path, None, info))
        else:
            entries.append(GeneratorEntry(path.name + (DEMO_TAG if info.demo else ""), path, info))
    return entries


def generator_choices(models_dir) -> list[str]:
    return [e.choice for e in list_generators(models_dir)]


def resolve_generator(choice: str | None, uploaded: str | None, models_dir) -> Path:
    """The checkpoint to use: an uploaded file wins over the dropdown choice."""
    if uploaded:
        return Path(_file_path(uploaded))
    if not choice:
        where = f" in {models_dir}" if models_dir else ""
        raise UIError(f"No generator selected. Put a generator checkpoint (.safetensors or the authors' .pth){where} "
                      "and press Refresh, or upload one.")
    for entry in list_generators(models_dir):
        if entry.choice == choice:
            if entry.error:
                raise UIError(entry.error)
            return entry.path
    raise UIError(f"Generator '{choice}' is no longer in {models_dir}; press Refresh.")


_PROTECTORS: "OrderedDict[tuple, Protector]" = OrderedDict()
_PROTECTORS_LOCK = threading.Lock()
_PROTECTORS_MAX = 4


def get_protector(path: Path, budget: float, mode: str, device: str, precision: str) -> Protector:
    """A cached Protector for this checkpoint file (reloaded when the file changes) and options."""
    if mode not in MODES:
        raise UIError(f"Mode must be one of {', '.join(MODES)}, not {mode!r}.")
    if not 0 < float(budget) <= 255:
        raise UIError(f"The budget must be between 1 and 255 grey levels, not {budget}.")
    try:
        st = path.stat()
    except OSError as exc:
        raise UIError(f"{path.name}: cannot read the generator checkpoint ({exc.strerror}).") from exc
    key = (str(path), st.st_mtime_ns, st.st_size, float(budget), mode, str(device), precision)
    with _PROTECTORS_LOCK:
        if key in _PROTECTORS:
            _PROTECTORS.move_to_end(key)
            return _PROTECTORS[key]
        try:
            protector = Protector(load_generator(path), budget=float(budget), mode=mode, device=device,
                                  precision=precision)
        except (CheckpointError, ValueError, RuntimeError) as exc:
            raise UIError(f"Could not load the generator {path.name}: {exc}") from exc
        _PROTECTORS[key] = protector
        while len(_PROTECTORS) > _PROTECTORS_MAX:
            _PROTECTORS.popitem(last=False)
        return protector


def describe_generator(info: GeneratorInfo) -> str:
    text = info.describe()
    return f"⚠️ {DEMO_WARNING}\n\n{text}" if info.demo else text


# ------------------------------------------------------------------ protect


@dataclass
class PhotoResult:
    name: str
    original_png: Path
    protected_png: Path
    perturbation_png: Path
    max_change: float
    psnr_db: float
    ssim: float
    notes: list[str] = field(default_factory=list)


def new_output_dir() -> Path:
    """A fresh folder for one request's files; folders older than a few hours are removed."""
    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in OUTPUT_ROOT.iterdir():
        with contextlib.suppress(OSError):
            if old.is_dir() and now - old.stat().st_mtime > OUTPUT_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
    out = OUTPUT_ROOT / uuid.uuid4().hex
    out.mkdir()
    return out


def amplified_perturbation(original: torch.Tensor, protected: torch.Tensor, budget: float) -> tuple[np.ndarray, float]:
    """The 8-bit difference scaled so the budget fills the range around mid-grey; returns (H×W×3 uint8, gain)."""
    diff = torch.round(protected * 255) - torch.round(original * 255)
    gain = 127.0 / max(float(budget), 1.0)
    vis = (128 + diff * gain).clamp(0, 255).div(255)
    return to_uint8(vis), gain


def protect_photo(protector: Protector, upload: str, out_dir: Path, index: int, demo: bool) -> PhotoResult:
    """Protect one uploaded photo; write original, protected and amplified-perturbation PNGs into `out_dir`."""
    src = Path(_file_path(upload))
    try:
        loaded = load_image(src)
    except ImageError as exc:
        raise UIError(f"{_display_name(src)}: {str(exc).split(': ', 1)[-1]}") from exc
    x = loaded.tensor()
    try:
        y = protector(x)
    except (ValueError, RuntimeError) as exc:
        raise UIError(f"{_display_name(src)}: protection failed ({exc}).") from exc
    stem = f"{index + 1:02d}_{_safe_stem(src)}"
    tag = "_DEMO" if demo else ""
    prot8 = to_uint8(y)
    protected_png = save_image(out_dir / f"{stem}_protected{tag}.png", prot8)
    (out_dir / "preview").mkdir(exist_ok=True)
    original_png = save_image(out_dir / "preview" / f"{stem}_original.png", loaded.rgb)
    vis, gain = amplified_perturbation(x, y, protector.budget)
    pert_png = save_image(out_dir / "preview" / f"{stem}_perturbation_x{gain:.0f}.png", vis)
    stats = protection_stats(loaded.rgb, prot8)
    return PhotoResult(name=_display_name(src), original_png=original_png, protected_png=protected_png,
                       perturbation_png=pert_png, max_change=stats.max_change, psnr_db=stats.psnr,
                       ssim=float(ssim(y, x)[0]) if min(x.shape[-2:]) >= 11 else float("nan"),
                       notes=loaded.notes)


def zip_outputs(results: list[PhotoResult], out_dir: Path, demo: bool) -> Path:
    """All protected PNGs in one zip (stored, not recompressed: PNG is already compressed)."""
    path = out_dir / ("gapdiff_protected_DEMO.zip" if demo else "gapdiff_protected.zip")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for r in results:
            zf.write(r.protected_png, r.protected_png.name)
    return path


def summary_markdown(results: list[PhotoResult], failures: list[str], budget: float, info: GeneratorInfo,
                     cancelled: bool = False) -> str:
    lines = []
    if info.demo:
        lines += [f"⚠️ {DEMO_WARNING}", ""]
    if results:
        lines += [f"Protected {len(results)} photo(s) with a budget of {budget:g} grey levels (0-255 scale).", "",
                  "| photo | max change (grey levels) | PSNR (dB) | SSIM |", "|---|---|---|---|"]
        for r in results:
            lines.append(f"| {r.name} | {r.max_change:.0f} | {_fmt(r.psnr_db, 2)} | {_fmt(r.ssim, 4)} |")
        notes = [f"{r.name}: {n}" for r in results for n in r.notes]
        if notes:
            lines += ["", "Notes: " + "; ".join(notes)]
    if failures:
        lines += ["", f"**{len(failures)} photo(s) failed:**"] + [f"- {f}" for f in failures]
    if cancelled:
        lines += ["", "**Cancelled** before every photo was protected."]
    return "\n".join(lines)


# ------------------------------------------------------------------ robustness


@dataclass
class RobustnessResult:
    clean_jpeg_png: Path
    protected_jpeg_png: Path
    perturbation_png: Path
    markdown: str


_SURROGATES: dict[str, object] = {}
_SURROGATE_LOCK = threading.Lock()


def load_surrogate_cached(spec: str, device: str = "cpu"):
    """`tiny` (the built-in demo model) or a local diffusers folder / single-file checkpoint."""
    with _SURROGATE_LOCK:
        if spec not in _SURROGATES:
            try:
                from ..diffusion import load_surrogate
            except ImportError as exc:
                raise UIError(f"Loading a surrogate needs the diffusion extra: pip install 'gapdiff[diffusion]' "
                              f"({exc}).") from exc
            try:
                _SURROGATES[spec] = load_surrogate(spec).to(device)
            except (OSError, ValueError, RuntimeError) as exc:
                raise UIError(f"Could not load the surrogate {spec!r}: {exc}") from exc
        return _SURROGATES[spec]


def denoising_effect(surrogate, x01: torch.Tensor, timesteps=(100, 300, 500, 700, 900), seed: int = 0) -> float:
    """The surrogate's mean denoising error on `x01` (the training objective of `gapdiff_core.losses`, uniform
    weighting) over fixed timesteps with seeded noise, so clean and protected photos are compared on the same
    draws. Higher means the model learns these photos worse."""
    from ..losses import INSTANCE_PROMPT
    from ..training.validation import mean_denoising_error

    res = surrogate.resolution
    x = torch.nn.functional.interpolate(x01.float(), (res, res), mode="bilinear", antialias=True,
                                        align_corners=False).to(surrogate.device, surrogate.dtype)
    with torch.no_grad():
        emb = surrogate.encode_prompt([INSTANCE_PROMPT])
    values = [mean_denoising_error(surrogate, x, emb, torch.tensor([t]), seed=seed + i).mean().item()
              for i, t in enumerate(timesteps)]
    return sum(values) / len(values)


def robustness_check(clean_upload: str, protected: torch.Tensor | str | None, quality: int, out_dir: Path,
                     protector: Protector | None = None, surrogate=None, budget: float = 8.0) -> RobustnessResult:
    """JPEG both the clean and the protected photo at `quality`; measure how much of the perturbation (and, with
    a surrogate, of the adversarial effect) survives."""
    from ..preprocess.real import jpeg

    clean_path = Path(_file_path(clean_upload))
    try:
        clean = load_image(clean_path).tensor()
    except ImageError as exc:
        raise UIError(f"{_display_name(clean_path)}: {str(exc).split(': ', 1)[-1]}") from exc
    if isinstance(protected, (str, os.PathLike)):
        try:
            prot = load_image(_file_path(protected)).tensor()
        except ImageError as exc:
            raise UIError(f"Protected photo: {str(exc).split(': ', 1)[-1]}") from exc
        if prot.shape != clean.shape:
            raise UIError(f"The protected photo is {prot.shape[-1]}×{prot.shape[-2]} but the clean one is "
                          f"{clean.shape[-1]}×{clean.shape[-2]}; upload the matching pair.")
    elif protector is not None:
        prot = protector(clean)
        budget = protector.budget
    else:
        raise UIError("Upload the protected photo too, or choose a generator to protect the clean one.")
    if not 1 <= int(quality) <= 100:
        raise UIError(f"JPEG quality must be 1..100, not {quality}.")
    jc, jp = jpeg(clean, int(quality)), jpeg(prot, int(quality))
    d0 = torch.round(prot * 255) - torch.round(clean * 255)
    dj = torch.round(jp * 255) - torch.round(jc * 255)
    kept = dj.norm().item() / max(d0.norm().item(), 1e-12)
    corr = torch.nn.functional.cosine_similarity(d0.flatten(), dj.flatten(), dim=0).item() if d0.any() else 0.0
    clean_jpeg_png = save_image(out_dir / f"clean_jpeg_q{quality}.png", to_uint8(jc))
    protected_jpeg_png = save_image(out_dir / f"protected_jpeg_q{quality}.png", to_uint8(jp))
    vis, gain = amplified_perturbation(jc, jp, max(budget, 1))
    pert_png = save_image(out_dir / f"perturbation_after_jpeg_x{gain:.0f}.png", vis)
    lines = [f"JPEG quality {quality}: both photos compressed the same way (Pillow, 4:2:0).", "",
             "| | before JPEG | after JPEG |", "|---|---|---|",
             f"| max change (grey levels) | {d0.abs().max().item():.0f} | {dj.abs().max().item():.0f} |",
             f"| RMS change (grey levels) | {_rms(d0):.2f} | {_rms(dj):.2f} |",
             f"| PSNR vs clean (dB) | {_fmt(float(psnr(prot, clean)[0]), 2)} | {_fmt(float(psnr(jp, jc)[0]), 2)} |",
             "", f"Perturbation energy kept through JPEG: **{100 * kept:.0f}%** "
                 f"(correlation with the original perturbation {corr:.2f})."]
    if surrogate is not None:
        l_clean, l_prot = denoising_effect(surrogate, clean), denoising_effect(surrogate, prot)
        l_jc, l_jp = denoising_effect(surrogate, jc), denoising_effect(surrogate, jp)
        before, after = l_prot - l_clean, l_jp - l_jc
        share = after / before if before > 0 else float("nan")
        name = getattr(surrogate, "name", "surrogate")
        demo = " (DEMO model: the number shows the computation, not real protection)" \
            if getattr(surrogate, "is_demo", False) else ""
        lines += ["", f"Adversarial effect on **{name}**{demo} — the surrogate's denoising loss, higher means the "
                      "model learns the photo worse:", "",
                  "| | clean | protected | effect |", "|---|---|---|---|",
                  f"| before JPEG | {l_clean:.5f} | {l_prot:.5f} | {before:+.5f} |",
                  f"| after JPEG | {l_jc:.5f} | {l_jp:.5f} | {after:+.5f} |", "",
                  f"Share of the adversarial effect that survives JPEG: **{_fmt(100 * share, 0)}%**."]
    return RobustnessResult(clean_jpeg_png, protected_jpeg_png, pert_png, "\n".join(lines))


# ------------------------------------------------------------------ evaluate


METRIC_DIRECTIONS = {"fdfr": ("FDFR", "higher = stronger protection"), "ism": ("ISM", "lower = stronger protection"),
                     "brisque": ("BRISQUE", "higher = stronger protection"),
                     "serfiq": ("SER-FIQ", "lower = stronger protection")}


def evaluate_uploads(generated: list[str], references: list[str] | None) -> str:
    """The four protocol metrics of generated photos (ISM against the clean references) as Markdown."""
    if not generated:
        raise UIError("Upload the photos generated by the fine-tuned model.")
    try:
        from ..metrics import evaluate_images
    except ImportError as exc:
        raise UIError(f"The metrics need the metrics extra: pip install 'gapdiff[metrics]' ({exc}).") from exc
    gen = [_rgb(p) for p in generated]
    refs = [_rgb(p) for p in references] if references else None
    try:
        result = evaluate_images(gen, refs)
    except Exception as exc:  # backends raise their own types (ONNX, OpenCV); shown as a message
        raise UIError(f"Evaluation failed: {type(exc).__name__}: {exc}") from exc
    lines = [f"{result['n_images']} generated photo(s)" + (f", {len(refs)} reference photo(s)" if refs else
                                                          ", no references (ISM needs them)"), "",
             "| metric | value | direction | backend |", "|---|---|---|---|"]
    for key, (label, direction) in METRIC_DIRECTIONS.items():
        r = result.get(key)
        if r is None:
            lines.append(f"| {label} | n/a | {direction} | — |")
        else:
            lines.append(f"| {label} | {_fmt(r.get('value'), 4)} | {direction} | {r.get('backend', '?')} |")
    backends = result.get("backends", {})
    if backends:
        lines += ["", "Backends: " + "; ".join(f"{k}: {v}" for k, v in backends.items())]
    return "\n".join(lines)


# ------------------------------------------------------------------ helpers


def _file_path(upload) -> str:
    """Gradio passes uploads as str paths (4.x+) or tempfile wrappers with `.name` (3.x)."""
    if isinstance(upload, dict):
        return upload.get("path") or upload.get("name")
    return str(getattr(upload, "name", upload))


def _display_name(path: Path) -> str:
    return path.name


def _safe_stem(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:60]
    return stem or "photo"


def _rgb(upload) -> np.ndarray:
    path = Path(_file_path(upload))
    try:
        return load_image(path).rgb
    except ImageError as exc:
        raise UIError(f"{path.name}: {str(exc).split(': ', 1)[-1]}") from exc


def _rms(d: torch.Tensor) -> float:
    return d.float().pow(2).mean().sqrt().item()


def _fmt(v, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return f"{v:.{digits}f}"
