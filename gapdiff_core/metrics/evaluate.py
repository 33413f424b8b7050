"""All protocol metrics of a set of generated images in one call, detection shared across metrics; and the fidelity
of protected photos to the clean ones."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from .brisque_iqa import brisque, brisque_backend
from .face_iqa import FACE_BRISQUE_BACKEND, QUALITYFACE_BACKEND, face_brisque, qualityface
from .faces import DEFAULT_DETECTOR, get_detector, get_embedder
from .fidelity import change_stats, ssim_uint8
from .identity import analyze_faces, fdfr, ism
from .images import ImageBatch, to_uint8_rgb
from .serfiq import serfiq, serfiq_backend


def evaluate_images(generated: ImageBatch, references: Optional[ImageBatch | np.ndarray] = None, *,
                    detector: str = DEFAULT_DETECTOR, embedder: str = "sface", threshold: float = 0.9,
                    serfiq_T: int = 100, seed: int = 0, models_dir: Optional[str] = None,
                    upscale_short_side: Optional[int] = None) -> dict:
    """FDFR, ISM, BRISQUE, SER-FIQ and the two face diagnostics (QualityFace, face-box BRISQUE) of ``generated``
    (B×3×H×W in [0, 1] or H×W×3 uint8 arrays), each with its per-image values.

    ``references``: the identity's clean photos (set_C) or their precomputed ``reference_embedding``;
    without them ISM is None. SER-FIQ runs on ``embedder`` when it has a dropout head (else None), on MTCNN's faces;
    the other face metrics share one detection per image. Each entry names its backend; directions: FDFR↑ ISM↓
    BRISQUE↑ SER-FIQ↓ QualityFace↓ face-box BRISQUE↑ mean stronger protection. ``fdfr.per_image``: 1 where no face
    was found. ``models_dir``: the folder of user-supplied face weights; ``upscale_short_side``: detect on photos
    upscaled to that short side (:func:`gapdiff_core.metrics.faces.get_detector`).
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
                             models_dir=models_dir, upscale_short_side=upscale_short_side)
    out = {
        "n_images": len(images),
        "fdfr": {**fdfr(images, analyses=analyses).to_dict(),
                 "per_image": [0.0 if it.detected else 1.0 for it in analyses.items]},
        "ism": (ism(images, references, backend=embedder, analyses=analyses).to_dict()
                if references is not None else None),
        "brisque": brisque(images).to_dict(),
        "serfiq": serfiq(images, T=serfiq_T, backend=embedder, seed=seed).to_dict() if has_dropout else None,
        "qualityface": qualityface(images, analyses=analyses).to_dict(),
        "face_brisque": face_brisque(images, analyses=analyses).to_dict(),
        "backends": {"detector": f"{detector}: {det.description}",
                     "embedder": f"{embedder}: {emb.description}",
                     "brisque": brisque_backend(), "qualityface": QUALITYFACE_BACKEND,
                     "face_brisque": FACE_BRISQUE_BACKEND},
    }
    if has_dropout:
        out["backends"]["serfiq"] = serfiq_backend(embedder)
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
