"""What every face backend shares: a detection (:class:`Face`), the detector and embedder interfaces, the error a
backend raises when it cannot run here, and the plausibility filter on detections."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .face_models import BackendUnavailable  # defined beside the weight files, whose absence it reports

__all__ = ["BackendUnavailable", "Face", "FaceDetector", "FaceEmbedder", "cv2_geometry", "ranked"]


@dataclass(frozen=True)
class Face:
    """One detection: box (x, y, w, h) in pixels, 5 landmarks (image-left eye, image-right eye, nose,
    image-left mouth corner, image-right mouth corner) as a 5×2 array, confidence score."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float

    @property
    def area(self) -> float:
        return max(self.box[2], 0.0) * max(self.box[3], 0.0)


class FaceDetector(Protocol):
    name: str
    description: str

    def detect(self, rgb: np.ndarray) -> list[Face]: ...


class FaceEmbedder(Protocol):
    name: str
    description: str

    def embed(self, crops: np.ndarray) -> np.ndarray: ...


def cv2_geometry():
    """OpenCV for image geometry only (resize, warpAffine, borders): any 4.x or 5.x; the networks never use it."""
    try:
        import cv2
    except ImportError as e:
        raise BackendUnavailable("OpenCV (4.x or 5.x) is needed for the face crops: pip install "
                                 "opencv-python-headless, or keep the OpenCV distribution already installed") from e
    return cv2


def ranked(faces: list[Face], shape: tuple) -> list[Face]:
    """Detections by falling score, keeping only plausible ones: finite numbers, a box of positive size whose
    centre lies in the image and whose sides are at most twice the image's (a detector's decoding can overflow
    on degenerate images, such as a random model's tiny generations: boxes at 1e27 were seen)."""
    h, w = shape[:2]

    def plausible(f: Face) -> bool:
        x, y, bw, bh = f.box
        return (np.isfinite(f.box).all() and np.isfinite(f.landmarks).all() and np.isfinite(f.score)
                and 0 < bw <= 2 * w and 0 < bh <= 2 * h and 0 <= x + bw / 2 <= w and 0 <= y + bh / 2 <= h)
    return sorted(filter(plausible, faces), key=lambda f: -f.score)
