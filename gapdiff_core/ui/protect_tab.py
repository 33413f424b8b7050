"""The Protect tab without Gradio: protect one uploaded photo into lossless PNGs (protected, original, amplified
perturbation) with its change statistics, zip a request's protected PNGs, and summarise the request."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..common.visualize import amplified_perturbation
from ..io import save_image
from ..io.atomic import write_file
from ..metrics.directions import format_value
from ..metrics.fidelity import change_stats, ssim_uint8
from ..model.checkpoint import GeneratorInfo
from ..model.protector import Protector
from .settings import DEFAULT_MAX_PIXELS, UIError
from .uploads import file_path, load_upload, safe_stem


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


def protect_photo(protector: Protector, upload: str, out_dir: Path, index: int, demo: bool,
                  max_pixels: int = DEFAULT_MAX_PIXELS, step: Callable[[float, str], None] = lambda done, what: None
                  ) -> PhotoResult:
    """Protect one uploaded photo; write original, protected and amplified-perturbation PNGs into `out_dir`.
    Everything at full resolution stays in 8 bits (Protector.protect_uint8), so memory follows BYTES_PER_PIXEL.
    `step(done, what)` hears each stage start, `done` being the share of this photo's work already done."""
    src = Path(file_path(upload))
    step(0.0, "reading")
    loaded = load_upload(src, max_pixels)
    step(0.1, "protecting")
    try:
        prot8 = protector.protect_uint8(loaded.rgb)
    except (ValueError, RuntimeError) as exc:
        raise UIError(f"{src.name}: protection failed ({exc}).") from exc
    step(0.6, "writing the PNGs")
    stem = f"{index + 1:02d}_{safe_stem(src)}"
    tag = "_DEMO" if demo else ""
    protected_png = save_image(out_dir / f"{stem}_protected{tag}.png", prot8)
    (out_dir / "preview").mkdir(exist_ok=True)
    original_png = save_image(out_dir / "preview" / f"{stem}_original.png", loaded.rgb)
    vis, gain = amplified_perturbation(loaded.rgb, prot8, protector.budget)
    pert_png = save_image(out_dir / "preview" / f"{stem}_perturbation_x{gain:.0f}.png", vis)
    del vis
    step(0.85, "measuring the change")
    stats = change_stats(loaded.rgb, prot8)
    return PhotoResult(name=src.name, original_png=original_png, protected_png=protected_png,
                       perturbation_png=pert_png, max_change=stats.max_change, psnr_db=stats.psnr,
                       ssim=ssim_uint8(prot8, loaded.rgb), notes=loaded.notes)


def zip_outputs(results: list[PhotoResult], out_dir: Path, demo: bool) -> Path:
    """All protected PNGs in one zip (stored, not recompressed: PNG is already compressed), written atomically."""
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for r in results:
                zf.write(r.protected_png, r.protected_png.name)

    return write_file(out_dir / ("gapdiff_protected_DEMO.zip" if demo else "gapdiff_protected.zip"), write)


def summary_markdown(results: list[PhotoResult], failures: list[str], budget: float, info: GeneratorInfo) -> str:
    """The request's outcome; a demo generator's results are labelled DEMO (its warning is above, once)."""
    lines = []
    if results:
        what = "with the DEMO generator (nothing real is protected), at" if info.demo else "at"
        lines += [f"Protected {len(results)} photo(s) {what} a budget of {budget:g} grey levels (0-255 scale).", "",
                  "| photo | change | PSNR | SSIM |", "|---|---|---|---|"]
        for r in results:
            lines.append(f"| {r.name} | {r.max_change:.0f} | {format_value(r.psnr_db, 1)} | "
                         f"{format_value(r.ssim, 3)} |")
        lines += ["", "*change*: the largest change of any pixel, in grey levels (never above the budget). *PSNR* "
                      "(dB) and *SSIM*: how close the protected photo is to the original (higher = closer; above "
                      "about 40 dB most people see no difference)."]
        notes = [f"{r.name}: {n}" for r in results for n in r.notes]
        if notes:
            lines += ["", "Notes: " + "; ".join(notes)]
    if failures:
        lines += ["", f"**{len(failures)} photo(s) failed:**"] + [f"- {f}" for f in failures]
    return "\n".join(lines)


def result_dict(r: PhotoResult, demo: bool) -> dict:
    """What the page keeps of a result to show it again when it is picked in the gallery."""
    return {"name": r.name, "original": str(r.original_png), "protected": str(r.protected_png),
            "perturbation": str(r.perturbation_png), "max_change": r.max_change, "psnr": r.psnr_db, "ssim": r.ssim,
            "demo": demo}


def photo_markdown(r: dict) -> str:
    """One photo's change in words, under its before / after / perturbation."""
    gain = Path(r["perturbation"]).stem.rsplit("_x", 1)[-1]
    label = "DEMO output: " if r["demo"] else ""
    return (f"{label}**{r['name']}**: largest change {r['max_change']:.0f} grey levels, PSNR "
            f"{format_value(r['psnr'], 2)} dB, SSIM {r['ssim']:.4f}. The perturbation is shown ×{gain}; mid-grey "
            "means no change.")
