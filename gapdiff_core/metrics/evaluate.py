"""All protocol metrics of a set of generated images in one call, detection shared across metrics."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from .brisque_iqa import brisque, brisque_backend
from .face_iqa import BACKEND as FACE_QUALITY_BACKEND, face_quality
from .faces import DEFAULT_DETECTOR, get_detector, get_embedder
from .fidelity import psnr, ssim
from .identity import analyze_faces, fdfr, ism
from .images import ImageBatch, to_uint8_rgb
from .serfiq import serfiq


def evaluate_images(generated: ImageBatch, references: Optional[ImageBatch | np.ndarray] = None, *,
                    detector: str = DEFAULT_DETECTOR, embedder: str = "sface", threshold: float = 0.9,
                    serfiq_T: int = 100, serfiq_alpha: float = 130.0, serfiq_r: float = 0.88,
                    seed: int = 0) -> dict:
    """FDFR, ISM, BRISQUE, SER-FIQ and face quality of ``generated`` (B×3×H×W in [0, 1] or H×W×3 uint8
    arrays).

    ``references``: the identity's clean photos (set_C) or their precomputed ``reference_embedding``;
    without them ISM is None. Each entry names its backend; directions: FDFR↑ ISM↓ BRISQUE↑ SER-FIQ↓
    face_quality↓ mean stronger protection. ``face_quality`` has ``value`` (undetected faces count 0)
    and ``value_detected_only``. Faces are detected and embedded once per image.
    """
    t0 = time.perf_counter()
    images = to_uint8_rgb(generated)
    if not images:
        raise ValueError("evaluate_images: no images given")
    has_dropout = hasattr(get_embedder(embedder), "dropout_embeddings")  # SER-FIQ needs the dropout head
    analyses = analyze_faces(images, detector=detector, embedder=embedder, threshold=threshold,
                             keep_trunk=has_dropout)
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
        "backends": {"detector": f"{detector}: {get_detector(detector, float(threshold)).description}",
                     "embedder": f"{embedder}: {get_embedder(embedder).description}",
                     "brisque": brisque_backend(), "face_quality": FACE_QUALITY_BACKEND},
    }
    out["seconds"] = time.perf_counter() - t0
    return out


def fidelity(protected: torch.Tensor, clean: torch.Tensor) -> dict:
    """Mean PSNR (dB) and SSIM of protected vs clean photos (B×3×H×W in [0, 1]) and the L∞ change in
    grey levels (0–255)."""
    p, s = psnr(protected, clean), ssim(protected, clean)
    linf = (protected.float() - clean.float()).abs().amax().item() * 255.0
    return {"psnr_db": float(p.mean()), "ssim": float(s.mean()), "linf_grey_levels": linf,
            "per_image_psnr_db": p.tolist(), "per_image_ssim": s.tolist(),
            "backend": "gapdiff torch PSNR/SSIM (Wang et al., 11×11 Gaussian window, σ 1.5)"}
