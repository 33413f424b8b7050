"""SER-FIQ face image quality (Terhörst et al., CVPR 2020) on SFace's dropout layer.

For each face: run the trunk once, then T passes of the head with independent dropout masks
(SFace: Dropout(0.4) -> pre_fc1 -> fc1 BatchNorm, the same place as in insightface's ArcFace),
L2-normalise the T embeddings, take the mean pairwise Euclidean distance d over the upper triangle,
q = 2 / (1 + exp(d)), then rescale 1 / (1 + exp(-alpha (q - r))), exactly as the authors' code.
Images without a detected face score 0 and count in the mean (GAP-Diff's protocol).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from .faces import DEFAULT_DETECTOR, get_embedder
from .identity import Analyses, analyze_faces
from .images import ImageBatch


def serfiq_from_embeddings(embeddings: np.ndarray, alpha: float = 130.0, r: float = 0.88) -> tuple[float, float]:
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
    """Mean SER-FIQ quality in [0, 1] (lower = worse faces = stronger protection)."""

    value: float
    value_detected_only: Optional[float]
    n_images: int
    n_detected: int
    backend: str
    detector: str
    T: int
    alpha: float
    r: float
    per_image: list = field(default_factory=list)  # scaled score, 0.0 where no face was found
    raw_q: list = field(default_factory=list)  # 2/(1+exp(d)) before rescaling, None where no face

    def to_dict(self) -> dict:
        return asdict(self)


def serfiq(images: ImageBatch, T: int = 100, alpha: float = 130.0, r: float = 0.88, backend: str = "sface",
           detector: str = DEFAULT_DETECTOR, threshold: float = 0.9, seed: int = 0,
           analyses: Optional[Analyses] = None) -> SERFIQResult:
    """SER-FIQ of each image's largest face. Every face gets the same ``seed``-ed set of T dropout
    masks, so a score does not depend on the other images in the batch (and runs are reproducible)."""
    if T < 2:
        raise ValueError("serfiq: T must be at least 2")
    a = analyses
    if a is None or any(it.detected and it.trunk is None for it in a.items):
        a = analyze_faces(images, detector=detector, embedder=backend, threshold=threshold, keep_trunk=True)
    emb = get_embedder(a.embedder)
    if not hasattr(emb, "dropout_embeddings"):
        raise ValueError(f"serfiq: embedder {a.embedder!r} exposes no dropout layer; use 'sface'")
    scores, raws = [], []
    for it in a.items:
        if not it.detected:
            scores.append(0.0)
            raws.append(None)
            continue
        s, q = serfiq_from_embeddings(emb.dropout_embeddings(it.trunk, T, seed), alpha, r)
        scores.append(s)
        raws.append(q)
    found = [s for s, q in zip(scores, raws) if q is not None]
    return SERFIQResult(float(np.mean(scores)) if scores else float("nan"),
                        float(np.mean(found)) if found else None, len(scores), len(found),
                        a.embedder, a.detector, T, alpha, r, scores, raws)
