"""All protocol metrics of a set of generated images in one call, detection shared across metrics; and the fidelity
of protected photos to the clean ones."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from .brisque_iqa import brisque, brisque_backend
from .face_iqa import BACKEND as FACE_QUALITY_BACKEND, face_quality
from .faces import DEFAULT_DETECTOR, get_detector, get_embedder
from .fidelity import change_stats, ssim_uint8
from .identity import analyze_faces, fdfr, ism
from .images import ImageBatch, to_uint8_rgb
from .serfiq import serfiq


def evaluate_images(generated: ImageBatch, references: Optional[ImageBatch | np.ndarray] = None, *,
                    detector: str = DEFAULT_DETECTOR, embedder: str = "sface", threshold: float = 0.9,
                    serfiq_T: int = 100, serfiq_alpha: float = 130.0, serfiq_r: float = 0.88,
                    seed: int = 0, models_dir: Optional[str] = None, upscale_short_side: Optional[int] = None) -> dict:
    """FDFR, ISM, BRISQUE, SER-FIQ and face quality of ``generated`` (B×3×H×W in [0, 1] or H×W×3 uint8
    arrays).

    ``references``: the identity's clean photos (set_C) or their precomputed ``reference_embedding``;
    without them ISM is None. Each entry names its backend; directions: FDFR↑ ISM↓ BRISQUE↑ SER-FIQ↓
    face_quality↓ mean stronger protection. ``face_quality`` has ``value`` (undetected faces count 0)
    and ``value_detected_only``. Faces are detected and embedded once per image. ``models_dir``: the folder of
    user-supplied face weights; ``upscale_short_side``: detect on photos upscaled to that short side
    (:func:`gapdiff_core.metrics.faces.get_detector`).
    """
    t0 = time.perf_counter()
    images = to_uint8_rgb(generated)
    if not images:
        raise ValueError("evaluate_images: no images given")
    models_dir = None if models_dir is None else str(models_dir)
    emb = get_embedder(embedder, models_dir)
    det = get_detector(detector, float(threshold), models_dir, upscale_short_side)
    has_dropout = hasattr(emb, "dropout_embeddings")  # SER-FIQ needs the dropout head
    analyses = analyze_faces(images, detector=detector, embedder=embedder, threshold=threshold,
                             keep_trunk=has_dropout, models_dir=models_dir, upscale_short_side=upscale_short_side)
    out = {
        "n_images": len(images),
        "fdfr": fdfr(images, analyses=analyses).to_dict(),
        "ism": (ism(images, references, backend=embedder, analyses=analyses).to_dict()
                if references is not None else None),
        "brisque": brisque(images).to_dict(),
        "serfiq": (serfiq(images, T=serfiq_T, alpha=serfiq_alpha, r=serfiq_r, seed=seed,
                          analyses=analyses).to_dict()
                   if has_dropout else None),
        "face_quality": face_quality(images, analyses=analyses).to_dict(),
        "backends": {"detector": f"{detector}: {det.description}",
                     "embedder": f"{embedder}: {emb.description}",
                     "brisque": brisque_backend(), "face_quality": FACE_QUALITY_BACKEND},
    }
    out["seconds"] = time.perf_counter() - t0
    return out


def protection_fidelity(protected: ImageBatch, clean: ImageBatch) -> dict:
    """How visible a protection is, on the photos' 8-bit values: the mean PSNR (dB; ∞ if any photo is unchanged)
    and SSIM of protected vs clean photos, and the largest change in grey levels (0-255), with each photo's PSNR
    and SSIM. Photos: B×3×H×W tensors in [0, 1] (rounded to 8 bits) or lists of H×W×3 uint8 arrays, the sizes of
    which may differ from pair to pair."""
    protected, clean = to_uint8_rgb(protected), to_uint8_rgb(clean)
    if not protected or len(protected) != len(clean):
        raise ValueError(f"fidelity needs one clean photo per protected photo, got {len(protected)} protected and "
                         f"{len(clean)} clean")
    pairs = list(zip(protected, clean))
    stats = [change_stats(c, p) for p, c in pairs]
    psnrs, ssims = [s.psnr for s in stats], [ssim_uint8(p, c) for p, c in pairs]
    return {"psnr_db": sum(psnrs) / len(psnrs), "ssim": sum(ssims) / len(ssims),
            "linf_grey_levels": max(s.max_change for s in stats), "per_image_psnr_db": psnrs, "per_image_ssim": ssims,
            "backend": "gapdiff 8-bit PSNR and largest change (exact), SSIM (Wang et al., 11×11 Gaussian window, "
                       "σ 1.5)"}
