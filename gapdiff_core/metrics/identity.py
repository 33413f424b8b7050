"""Face detection failure rate (FDFR) and identity score matching (ISM), Anti-DreamBooth protocol.

Detection and embedding run once per image (``analyze_faces``); FDFR, ISM and SER-FIQ can share
that analysis, which is what ``evaluate_images`` does.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from .faces import DEFAULT_DETECTOR, Face, align_face, get_detector, get_embedder
from .images import ImageBatch, to_uint8_rgb


@dataclass
class FaceAnalysis:
    """One image: all faces above the threshold, the largest one and its embedding."""

    faces: list[Face]
    largest: Optional[Face] = None
    embedding: Optional[np.ndarray] = None

    @property
    def detected(self) -> bool:
        return self.largest is not None


@dataclass
class Analyses:
    """Face analyses of a batch, with the backends and threshold that produced them."""

    items: list[FaceAnalysis]
    detector: str
    embedder: Optional[str]
    threshold: float
    models_dir: Optional[str] = None
    upscale_short_side: Optional[int] = None

    def __len__(self) -> int:
        return len(self.items)


def analyze_faces(images: ImageBatch, detector: str = DEFAULT_DETECTOR, embedder: Optional[str] = "sface",
                  threshold: float = 0.9, models_dir: Optional[str] = None,
                  upscale_short_side: Optional[int] = None) -> Analyses:
    """Detect faces (confidence >= threshold) in every image; embed the largest face's aligned crop.
    ``embedder=None`` only detects.
    ``models_dir``: the folder of user-supplied weights; ``upscale_short_side``: detect on the photo upscaled to
    that short side (:func:`gapdiff_core.metrics.faces.get_detector`)."""
    models_dir = None if models_dir is None else str(models_dir)
    det = get_detector(detector, float(threshold), models_dir, upscale_short_side)
    emb = get_embedder(embedder, models_dir) if embedder else None
    items = []
    for rgb in to_uint8_rgb(images):
        faces = det.detect(rgb)
        item = FaceAnalysis(faces)
        if faces:
            item.largest = max(faces, key=lambda f: f.area)
            if emb is not None:
                item.embedding = emb.embed(align_face(rgb, item.largest)[None])[0]
        items.append(item)
    return Analyses(items, detector, embedder, float(threshold), models_dir, upscale_short_side)


@dataclass
class FDFRResult:
    """Face detection failure rate in [0, 1] (higher = stronger protection)."""

    value: float
    n_images: int
    n_failed: int
    backend: str
    threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ISMResult:
    """Identity score matching: mean cosine similarity to the reference identity (lower = stronger
    protection); ``value`` is None when no face was found in any image."""

    value: Optional[float]
    n_images: int
    n_detected: int
    backend: str
    detector: str
    threshold: float
    per_image: list = field(default_factory=list)  # cosine, or None where no face was found

    def to_dict(self) -> dict:
        return asdict(self)


def fdfr(images: ImageBatch, backend: str = DEFAULT_DETECTOR, threshold: float = 0.9,
         analyses: Optional[Analyses] = None, **detection) -> FDFRResult:
    """Share of images in which ``backend`` finds no face with confidence >= ``threshold``; ``detection``:
    ``models_dir``, ``upscale_short_side`` (:func:`analyze_faces`)."""
    a, missed = _missed_faces(images, backend, threshold, analyses, "fdfr", detection)
    return FDFRResult(len(missed) / len(a), len(a), len(missed), a.detector, a.threshold)


def _missed_faces(images: ImageBatch, backend: str, threshold: float, analyses: Optional[Analyses],
                  caller: str, detection: dict) -> tuple[Analyses, list[int]]:
    """The detections (given or computed) and the indices of the images without a face."""
    a = analyses or analyze_faces(images, detector=backend, embedder=None, threshold=threshold, **detection)
    if len(a) == 0:
        raise ValueError(f"{caller}: no images given")
    return a, [i for i, it in enumerate(a.items) if not it.detected]


def reference_embedding(references: ImageBatch, backend: str = "sface", detector: str = DEFAULT_DETECTOR,
                        threshold: float = 0.9, **detection) -> np.ndarray:
    """Mean raw embedding of the largest face of each clean reference photo (set_C in the protocol);
    references without a detected face are skipped (that only rescales the mean). ``detection``: ``models_dir``,
    ``upscale_short_side`` (:func:`analyze_faces`)."""
    a = analyze_faces(references, detector=detector, embedder=backend, threshold=threshold, **detection)
    embs = [it.embedding for it in a.items if it.detected]
    if not embs:
        raise ValueError(f"ism: {detector} found no face in any of the {len(a)} reference photos")
    return np.mean(embs, axis=0)


def ism(images: ImageBatch, references: ImageBatch | np.ndarray, backend: str = "sface",
        detector: str = DEFAULT_DETECTOR, threshold: float = 0.9, analyses: Optional[Analyses] = None) -> ISMResult:
    """Cosine similarity between the largest face's embedding and the mean reference embedding,
    averaged over the images where a face was found. ``references`` are photos or a precomputed
    ``reference_embedding`` (1-D array)."""
    a = analyses or analyze_faces(images, detector=detector, embedder=backend, threshold=threshold)
    if a.embedder != backend:
        raise ValueError(f"ism: analyses were embedded with {a.embedder!r}, not {backend!r}")
    if isinstance(references, np.ndarray) and references.ndim == 1:
        ref = references
    else:
        ref = reference_embedding(references, backend, a.detector, a.threshold, models_dir=a.models_dir,
                                  upscale_short_side=a.upscale_short_side)
    ref_unit = ref / np.linalg.norm(ref)
    sims = [None if not it.detected else float(it.embedding @ ref_unit / np.linalg.norm(it.embedding))
            for it in a.items]
    found = [s for s in sims if s is not None]
    return ISMResult(float(np.mean(found)) if found else None, len(a), len(found), backend,
                     a.detector, a.threshold, sims)


@dataclass
class DetectionRateResult:
    """Share of clean reference photos in which the detector finds a face: the detector's floor.
    FDFR on generated images cannot be read below ``1 - value``."""

    value: float
    n_images: int
    n_detected: int
    backend: str
    threshold: float
    missed: list = field(default_factory=list)  # indices of the photos without a detected face

    def to_dict(self) -> dict:
        return asdict(self)


def reference_detection_rate(references: ImageBatch, backend: str = DEFAULT_DETECTOR, threshold: float = 0.9,
                             analyses: Optional[Analyses] = None, **detection) -> DetectionRateResult:
    """Detection rate of ``backend`` on clean photos (set_C or set_A), for reports next to FDFR; ``detection``:
    ``models_dir``, ``upscale_short_side`` (:func:`analyze_faces`)."""
    a, missed = _missed_faces(references, backend, threshold, analyses, "reference_detection_rate", detection)
    return DetectionRateResult(1.0 - len(missed) / len(a), len(a), len(a) - len(missed), a.detector,
                               a.threshold, missed)


@dataclass
class ISMSummary:
    """ISM across identities.

    ``value``: the official rule (GAP-Diff ``full_ism_fdfr.py``): each identity's ISM (mean over its
    detected faces), an identity with no detected face adding 0, divided by all identities.
    ``value_detected_faces``: mean cosine over every detected face of every identity (None if none).
    """

    value: float
    value_detected_faces: Optional[float]
    n_identities: int
    n_identities_without_face: int
    n_faces: int

    def to_dict(self) -> dict:
        return asdict(self)


def ism_across_identities(per_identity) -> ISMSummary:
    """Summarise one ISM per identity: ``ISMResult``s or their ``to_dict()`` (``value`` None or
    ``n_detected`` 0 = no detected face). The detected-face mean weights each identity's ISM by its
    ``n_detected``, i.e. it pools the faces."""
    rows = [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in per_identity]
    if not rows:
        raise ValueError("ism_across_identities: no identities given")
    total, pooled, n_faces, empty = 0.0, 0.0, 0, 0
    for r in rows:
        value, n = r.get("value"), int(r.get("n_detected") or 0)
        if value is None or n == 0:
            empty += 1
            continue
        total += value
        pooled += value * n
        n_faces += n
    return ISMSummary(total / len(rows), pooled / n_faces if n_faces else None, len(rows), empty, n_faces)
