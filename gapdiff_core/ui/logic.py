"""What the UI does, without Gradio: list generators, protect uploaded photos into lossless PNGs, check JPEG
robustness, evaluate generated photos. Every failure a user can cause raises `UIError` with a readable message.

Everything shown or downloaded is a PNG written here by `io.save_image` (lossless, metadata stripped): the UI
passes file paths to Gradio, which serves them byte for byte (it re-encodes only arrays and PIL images).
"""
from __future__ import annotations

import contextlib
import logging
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


from ..model.checkpoint import CheckpointError, GeneratorInfo, load_generator, read_info
from ..io import ImageError, load_image, save_image
from ..model.protector import MODES, Protector
from ..metrics.fidelity import change_stats, ssim_uint8
from ..metrics.robustness import jpeg_robustness
from ..common.visualize import amplified_perturbation

log = logging.getLogger("gapdiff.ui")
GENERATOR_SUFFIXES = (".safetensors", ".pth", ".pt")
DEMO_TAG = "  [DEMO: protects nothing real]"
DEMO_WARNING = ("**DEMO generator**: it was trained against a toy model and protects nothing real. "
                "Use these outputs to see how the tool works, not to protect photos.")
# One private folder per user (0700): photos and their protected versions are nobody else's business.
OUTPUT_ROOT = Path(tempfile.gettempdir()) / f"gapdiff-ui-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
OUTPUT_MAX_AGE_S = 6 * 3600
# Peak memory of one photo through protect_photo (working mode, fp32, CPU) is about this many bytes per pixel
# above the loaded generator (bench/app_memory.py: 40-43), so the default pixel limit keeps a photo near 1.1 GB.
# Photos of a request run one after another, so this bounds the request too.
BYTES_PER_PIXEL = 45
DEFAULT_MAX_PIXELS = 25_000_000


class UIError(ValueError):
    """A problem the user can fix; the message is shown as is."""


@dataclass
class UISettings:
    """Host-provided settings. The A1111 tab passes a callable returning fresh settings on every request."""

    models_dir: str | os.PathLike | None = None
    device: str = "auto"
    precision: str = "auto"
    default_budget: float = 8.0
    max_photos: int = 64  # per request, in each file list (Protect, Evaluate)
    max_pixels: int = DEFAULT_MAX_PIXELS  # per photo: memory grows with it (BYTES_PER_PIXEL)
    work_lock: Callable[[], ContextManager] = contextlib.nullcontext  # e.g. A1111's queue_lock
    # Folders a local surrogate may be read from (default: the models folder). Paths outside them get the same
    # answer as missing ones, so the tab cannot be used to probe the server's file system.
    surrogate_dirs: tuple = ()

    def surrogate_roots(self) -> list[Path]:
        return [Path(d) for d in (self.surrogate_dirs or (self.models_dir,)) if d]


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
    """The checkpoint's metadata, read without its weights (checkpoint.read_info), or why it cannot be used: one bad
    file must not stop the listing (or the app). The weights are checked when the generator is loaded."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"{path.name}: cannot be read ({exc.strerror})"
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _INFO_CACHE:
        try:
            _INFO_CACHE[key] = read_info(path)
        except CheckpointError as exc:
            _INFO_CACHE[key] = str(exc)
        except Exception as exc:  # noqa: BLE001 - anything else a broken file can raise is reported the same way
            log.warning("gapdiff: skipped %s (%s: %s)", path, type(exc).__name__, exc)
            _INFO_CACHE[key] = f"{path.name}: not a usable generator checkpoint ({type(exc).__name__}: {exc})"
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


def check_protect_request(uploads, choice: str | None, uploaded: str | None, s: UISettings) -> Path:
    """Everything about a Protect request that can be checked without loading anything; the generator's path."""
    if not as_list(uploads):
        raise UIError("Upload one or more photos first.")
    _check_count(as_list(uploads), s, "photos")
    return resolve_generator(choice, uploaded, s.models_dir)


def _check_count(files: list, s: UISettings, what: str) -> None:
    if len(files) > s.max_photos:
        raise UIError(f"{len(files)} {what} uploaded; at most {s.max_photos} at a time.")


def as_list(x) -> list:
    return [] if not x else (x if isinstance(x, list) else [x])


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


def private_dir(path: Path) -> Path:
    """`path` as a folder only this user can enter (0700), refused if another user owns it or it is a link."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if path.is_symlink() or not path.is_dir() or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        raise UIError(f"{path} belongs to another user or is not a folder; remove it or set TMPDIR.")
    if st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def new_output_dir() -> Path:
    """A fresh folder for one request's files inside this user's private OUTPUT_ROOT; folders older than a few
    hours are removed."""
    private_dir(OUTPUT_ROOT)
    now = time.time()
    for old in OUTPUT_ROOT.iterdir():
        with contextlib.suppress(OSError):
            if old.is_dir() and now - old.stat().st_mtime > OUTPUT_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
    out = OUTPUT_ROOT / uuid.uuid4().hex
    out.mkdir()
    return out


def _load(path: Path, max_pixels: int, label: str | None = None):
    try:
        return load_image(path, max_pixels=max_pixels)
    except ImageError as exc:
        raise UIError(f"{label or _display_name(path)}: {_reason(exc, max_pixels)}") from exc


def _reason(exc: ImageError, max_pixels: int) -> str:
    """The problem without the image reader's path (a server-side temp path); the server's limit in this server's words."""
    if exc.kind == "pixel_limit":
        return (f"larger than this server's limit of {max_pixels / 1e6:g} megapixels per photo; "
                "downscale it and upload again.")
    return exc.reason


def protect_photo(protector: Protector, upload: str, out_dir: Path, index: int, demo: bool,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> PhotoResult:
    """Protect one uploaded photo; write original, protected and amplified-perturbation PNGs into `out_dir`.
    Everything at full resolution stays in 8 bits (Protector.protect_uint8), so memory follows BYTES_PER_PIXEL."""
    src = Path(_file_path(upload))
    loaded = _load(src, max_pixels)
    try:
        prot8 = protector.protect_uint8(loaded.rgb)
    except (ValueError, RuntimeError) as exc:
        raise UIError(f"{_display_name(src)}: protection failed ({exc}).") from exc
    stem = f"{index + 1:02d}_{_safe_stem(src)}"
    tag = "_DEMO" if demo else ""
    protected_png = save_image(out_dir / f"{stem}_protected{tag}.png", prot8)
    (out_dir / "preview").mkdir(exist_ok=True)
    original_png = save_image(out_dir / "preview" / f"{stem}_original.png", loaded.rgb)
    vis, gain = amplified_perturbation(loaded.rgb, prot8, protector.budget)
    pert_png = save_image(out_dir / "preview" / f"{stem}_perturbation_x{gain:.0f}.png", vis)
    del vis
    stats = change_stats(loaded.rgb, prot8)
    return PhotoResult(name=_display_name(src), original_png=original_png, protected_png=protected_png,
                       perturbation_png=pert_png, max_change=stats.max_change, psnr_db=stats.psnr,
                       ssim=ssim_uint8(prot8, loaded.rgb), notes=loaded.notes)


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
                     protector: Protector | None = None, surrogate=None, budget: float = 8.0,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> RobustnessResult:
    """JPEG both the clean and the protected photo at `quality`; measure how much of the perturbation (and, with
    a surrogate, of the adversarial effect) survives. Full-resolution data stays in 8 bits."""
    clean_path = Path(_file_path(clean_upload))
    clean = _load(clean_path, max_pixels).rgb
    if isinstance(protected, (str, os.PathLike)):
        prot = _load(Path(_file_path(protected)), max_pixels, "Protected photo").rgb
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
             f"| PSNR vs clean (dB) | {_fmt(before.psnr, 2)} | {_fmt(after.psnr, 2)} |",
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


# ------------------------------------------------------------------ evaluate


METRIC_DIRECTIONS = {"fdfr": ("FDFR", "higher = stronger protection"), "ism": ("ISM", "lower = stronger protection"),
                     "brisque": ("BRISQUE", "higher = stronger protection"),
                     "serfiq": ("SER-FIQ", "lower = stronger protection"),
                     "face_quality": ("Face quality", "lower = stronger protection")}


def evaluate_uploads(generated: list[str], references: list[str] | None, s: UISettings | None = None) -> str:
    """The four protocol metrics of generated photos (ISM against the clean references) as Markdown; at most
    `s.max_photos` photos per list and `s.max_pixels` pixels per photo."""
    s = s or UISettings()
    if not generated:
        raise UIError("Upload the photos generated by the fine-tuned model.")
    _check_count(generated, s, "generated photos")
    _check_count(references or [], s, "reference photos")
    try:
        from ..metrics import evaluate_images
    except ImportError as exc:
        raise UIError(f"The metrics need the metrics extra: pip install 'gapdiff[metrics]' ({exc}).") from exc
    gen = [_load(Path(_file_path(p)), s.max_pixels).rgb for p in generated]
    refs = [_load(Path(_file_path(p)), s.max_pixels).rgb for p in references] if references else None
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


def _fmt(v, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return f"{v:.{digits}f}"
