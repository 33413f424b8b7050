"""SER-FIQ face image quality (Terhörst et al., CVPR 2020), model-agnostic, on the offline backbone.

As the authors' code: MTCNN finds the face (its best-scoring detection) and its 5 landmarks align it onto the
ArcFace 112×112 template; the backbone runs once, then T passes of its head with independent dropout masks (SFace:
Dropout(0.4) -> pre_fc1 -> fc1 BatchNorm, the place of ArcFace's dropout); the T embeddings are L2-normalised, d is
their mean pairwise Euclidean distance, and the raw score is q = 2 / (1 + exp(d)). The reported score rescales it,
1 / (1 + exp(-alpha (q - r))), as the authors' code does for ArcFace-R100 (alpha 130, r 0.88).

Those constants belong to ArcFace; SFace's q has another range, so they are refitted, on clean faces only and never
on the degradations the score is then tested on (``bench/face_quality.py`` prints the fit): the clean sample photos
(``gapdiff_core/samples``) cut square around their MTCNN face at three framings, each also mirrored (30 faces, at
512²); r and alpha put the clean faces' mean q at a score of 0.9 and the point 3 standard deviations below it at
0.5. Fit result: mean q ``FIT_MEAN_Q``, sd ``FIT_SD_Q``. The scores are **not comparable in absolute value to
published SER-FIQ**. Images without an MTCNN face score 0 and count in the mean (GAP-Diff's protocol).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from .faces import align_face, get_embedder
from .images import ImageBatch, to_uint8_rgb
from .mtcnn import DESCRIPTION as MTCNN_DESCRIPTION, MTCNNDetector

FIT_MEAN_Q, FIT_SD_Q = 0.91402, 0.00702  # measured by bench/face_quality.py on the clean fit set (see above)
FIT_SPREAD = 3.0  # r lies FIT_SPREAD standard deviations below the clean mean (score 0.5 there)
SERFIQ_R = FIT_MEAN_Q - FIT_SPREAD * FIT_SD_Q
SERFIQ_ALPHA = math.log(9.0) / (FIT_SPREAD * FIT_SD_Q)  # the clean mean scores 0.9
NOT_COMPARABLE = "not comparable in absolute value to published SER-FIQ"
#: the mean score's fall on the MTCNN faces of the sample photos as shipped (not the fit's framings), clean -> JPEG q5
#: and clean -> Gaussian blur σ 4 (bench/face_quality.py); the report uses SER-FIQ if both are >= 0.1, else labels it
SERFIQ_RESPONSE = {"jpeg5": 0.107, "blur4": 0.165}
SERFIQ_RESPONSIVE = min(SERFIQ_RESPONSE.values()) >= 0.1
FIT = (f"alpha {SERFIQ_ALPHA:.1f}, r {SERFIQ_R:.4f}, refitted on 30 clean sample faces (mean q {FIT_MEAN_Q:.4f} "
       f"scores 0.9, {FIT_SPREAD:g} sd below it 0.5); {NOT_COMPARABLE}")


def serfiq_from_embeddings(embeddings: np.ndarray, alpha: float = SERFIQ_ALPHA,
                           r: float = SERFIQ_R) -> tuple[float, float]:
    """(scaled score, raw q) from T stochastic embeddings (T×D) of one face."""
    x = np.asarray(embeddings, np.float64)
    x = x / np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    gram = np.einsum("ik,jk->ij", x, x)  # einsum, not BLAS: NumPy's BLAS can stall right after cv2.dnn
    iu = np.triu_indices(len(x), k=1)
    d = float(np.sqrt(np.clip(2.0 - 2.0 * gram[iu], 0.0, None)).mean())  # mean pairwise L2 distance, i<j
    q = 2.0 / (1.0 + np.exp(d))
    return float(1.0 / (1.0 + np.exp(-alpha * (q - r)))), float(q)


@dataclass
class SERFIQResult:
    """Mean SER-FIQ quality in [0, 1] (lower = worse faces = stronger protection), and the raw q."""

    value: float
    value_detected_only: Optional[float]
    raw_q_detected_only: Optional[float]
    n_images: int
    n_detected: int
    backend: str
    T: int
    alpha: float
    r: float
    per_image: list = field(default_factory=list)  # scaled score, 0.0 where no face was found
    raw_q: list = field(default_factory=list)  # 2/(1+exp(d)) before rescaling, None where no face

    def to_dict(self) -> dict:
        return asdict(self)


def serfiq_backend(embedder: str = "sface") -> str:
    return (f"SER-FIQ on {embedder} ({get_embedder(embedder).description}), aligned by {MTCNN_DESCRIPTION}; {FIT}")


def serfiq(images: ImageBatch, T: int = 100, alpha: float = SERFIQ_ALPHA, r: float = SERFIQ_R,
           backend: str = "sface", seed: int = 0) -> SERFIQResult:
    """SER-FIQ of each image's MTCNN face. ``backend``: an embedder with a dropout head (``forward`` returning its
    trunk features, ``dropout_embeddings``). Every face gets the same ``seed``-ed set of T dropout masks, so a score
    does not depend on the other images in the batch (and runs are reproducible)."""
    if T < 2:
        raise ValueError(f"serfiq: T must be at least 2, got {T}")
    emb = get_embedder(backend)
    if not hasattr(emb, "dropout_embeddings"):
        raise ValueError(f"serfiq: embedder {backend!r} exposes no dropout layer; use 'sface'")
    detector = MTCNNDetector()
    scores, raws = [], []
    for rgb in to_uint8_rgb(images):
        faces = detector.detect(rgb)
        if not faces:
            scores.append(0.0)
            raws.append(None)
            continue
        trunk = emb.forward(align_face(rgb, faces[0])[None])[1][0]
        s, q = serfiq_from_embeddings(emb.dropout_embeddings(trunk, T, seed), alpha, r)
        scores.append(s)
        raws.append(q)
    found = [(s, q) for s, q in zip(scores, raws) if q is not None]
    return SERFIQResult(float(np.mean(scores)) if scores else float("nan"),
                        float(np.mean([s for s, _ in found])) if found else None,
                        float(np.mean([q for _, q in found])) if found else None, len(scores), len(found),
                        serfiq_backend(backend), T, alpha, r, scores, raws)
