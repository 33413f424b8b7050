"""How close each differentiable simulator comes to its real transform (PSNR on sample photos)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..metrics.fidelity import psnr
from ..common.sizes import short_side_size
from ..samples import SAMPLES_DIR
from . import codecs, filters, geometry
from .differentiable_jpeg import diff_jpeg
from .jpeg_masking import jpeg_mask01
from .simulators import gaussian_blur, gaussian_noise, quantize, resize_bilinear

JPEG_QUALITIES = (30, 50, 70, 90)


def sample_photos(folder: Optional[Path] = None) -> list[Path]:
    """The shipped sample photos: *.jpg plus astronaut.png if present."""
    folder = Path(folder or SAMPLES_DIR)
    paths = sorted(folder.glob("*.jpg")) + sorted(folder.glob("astronaut.png"))
    if not paths:
        raise FileNotFoundError(f"no sample photos (*.jpg, astronaut.png) in {folder}; pass a folder that holds some")
    return paths


def load_photo(path: Path, size: int = 512) -> torch.Tensor:
    """1×3×size×size in [0, 1]: short side resized to `size` (Lanczos), centre-cropped square."""
    im = Image.open(path).convert("RGB")
    h, w = short_side_size(im.height, im.width, size)
    im = im.resize((w, h), Image.LANCZOS)
    left, top = (w - size) // 2, (h - size) // 2
    a = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None]


def _kornia_jpeg(x: torch.Tensor, q: int) -> torch.Tensor:
    import kornia

    return kornia.enhance.jpeg_codec_differentiable(x, torch.full((x.shape[0],), float(q))).clamp(0, 1)


def _cases() -> list[tuple[str, str, str, Callable, Callable]]:
    """(key, transform label, simulator label, simulator(x), real(x))."""
    cases = []
    for q in JPEG_QUALITIES:
        rj = lambda x, q=q: codecs.jpeg(x, q)
        cases.append((f"diffjpeg_q{q}", f"jpeg:{q}", "diff_jpeg", lambda x, q=q: diff_jpeg(x, q), rj))
        cases.append((f"kornia_q{q}", f"jpeg:{q}", "kornia jpeg_codec_differentiable", lambda x, q=q: _kornia_jpeg(x, q), rj))
        cases.append((f"jpegmask_q{q}", f"jpeg:{q}", "jpeg_mask01", jpeg_mask01, rj))
    cases.append(("blur", "blur (3×3, σx 0.1, σy 2)", "gaussian_blur(σ=(2, 0.1), k=3)",
                  lambda x: gaussian_blur(x, (2.0, 0.1), 3), filters.gaussian_blur))
    cases.append(("blur_train", "blur (3×3, σx 0.1, σy 2)", "gaussian_blur(σ=2, k=7) [training]",
                  lambda x: gaussian_blur(x, 2.0, 7), filters.gaussian_blur))
    cases.append(("noise", "noise:0.05 (same seed)", "gaussian_noise(std=0.05)",
                  lambda x: gaussian_noise(x, 0.05, torch.Generator().manual_seed(0)),
                  lambda x: filters.gaussian_noise(x, 0.05, seed=0)))
    cases.append(("quantize64", "quantize:64", "quantize(levels=64)", lambda x: quantize(x, 64),
                  lambda x: filters.quantize(x, 64)))
    cases.append(("resize256", "resize:256 (Pillow)", "resize_bilinear (torch, antialias)",
                  lambda x: resize_bilinear(x, (256, 256)), lambda x: geometry.resize(x, 256)))
    return cases


def fidelity_table(paths: Optional[Sequence[Path]] = None, size: int = 512) -> list[dict]:
    """Rows {key, transform, simulator, psnr_sim_vs_real, psnr_real_vs_clean}, PSNR averaged over photos."""
    photos = [load_photo(p, size) for p in (paths or sample_photos())]
    rows = []
    with torch.no_grad():
        for key, label, sim_label, sim, ref in _cases():
            sims, cleans = [], []
            for x in photos:
                r = ref(x)
                sims.append(float(psnr(sim(x), r).mean()))
                if r.shape == x.shape:
                    cleans.append(float(psnr(r, x).mean()))
            rows.append({
                "key": key, "transform": label, "simulator": sim_label,
                "psnr_sim_vs_real": float(np.mean(sims)),
                "psnr_real_vs_clean": float(np.mean(cleans)) if cleans else float("nan"),
                "photos": len(photos),
            })
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Readable table of :func:`fidelity_table` rows."""
    head = f"{'real transform':<26} {'simulator':<38} {'PSNR sim vs real':>17} {'real vs clean':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        clean = r["psnr_real_vs_clean"]
        clean_text = f"{clean:>11.2f} dB" if clean == clean else f"{'n/a (size)':>14}"
        lines.append(f"{r['transform']:<26} {r['simulator']:<38} {r['psnr_sim_vs_real']:>14.2f} dB {clean_text}")
    return "\n".join(lines)
