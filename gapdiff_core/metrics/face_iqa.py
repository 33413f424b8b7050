"""Two face-level diagnostics of detected faces, reported separately (no composite: nothing validates one).

* **QualityFace** (the ``qualityface`` wheel, MIT; github.com/siriusdemon/pytorch-QualityFace): torchvision's
  MobileNetV2 ``features`` -> global mean -> Linear(1280, 1), trained on WIDER FACE crops at 128×128 with inputs
  normalised to [-1, 1]; about 0.9 for a sharp face, falling with blur and noise. Its package imports torchvision,
  so only its checkpoint is used: the weights load (``weights_only``, no pickled code runs) into this project's
  MobileNetV2 (``mobilenet_v2.py``). The face is the detector's box made square (side = the longer side, centred),
  border pixels replicated where it leaves the image, resized to 128×128.
  An unpublished model with no stated labels: at 128 px a large face is shrunk several times, which hides JPEG
  blocking (bench/metrics.py: 0.909 clean, 0.912 after JPEG q5 with the face filling a 512² frame).
* **Face-box BRISQUE**: BRISQUE of the detector's face box at the image's own resolution (the box clipped to the
  image); it sees JPEG blocks on a large face, and knows nothing of faces.

Each is the mean over the images with a detected face (None without any): a diagnostic, not a protocol metric, so
an image without a face does not count (FDFR counts it). docs/quality.md has their error-versus-discard curves.
"""
from __future__ import annotations

import functools
import io
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from .brisque_iqa import brisque_score
from .face_models import model_bytes
from .faces import DEFAULT_DETECTOR, BackendUnavailable, Face, _cv2
from .identity import Analyses, analyze_faces
from .images import ImageBatch, to_uint8_rgb
from .mobilenet_v2 import MobileNetV2Features

QUALITYFACE_VERSION = "1.0.3"
QUALITYFACE_INPUT = 128
QUALITYFACE_BACKEND = (f"QualityFace MobileNetV2 regressor (qualityface {QUALITYFACE_VERSION} checkpoint, WIDER FACE, "
                       f"MIT) on the detector's square face box at {QUALITYFACE_INPUT}×{QUALITYFACE_INPUT}, clipped to "
                       "[0, 1]")
FACE_BRISQUE_BACKEND = "BRISQUE of the detector's face box at the image's resolution (the brisque package)"


class QualityFaceNet(nn.Module):
    """MobileNetV2 features -> spatial mean -> Linear(1280, 1); input B×3×128×128 in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.backbone = MobileNetV2Features()
        self.classify = nn.Linear(1280, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.backbone(x).mean(dim=(2, 3)))[:, 0]


def qualityface_checkpoint() -> io.BytesIO:
    """The checkpoint of the qualityface wheel, taken out of the wheel (``face_models.py``), never imported (the
    package's ``__init__`` imports torchvision and builds the model)."""
    return io.BytesIO(model_bytes("qualityface"))


@functools.lru_cache(maxsize=1)
def load_qualityface() -> QualityFaceNet:
    """QualityFaceNet with the shipped weights, in eval mode (loaded once)."""
    checkpoint = qualityface_checkpoint()
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise BackendUnavailable(f"cannot read the QualityFace checkpoint ({e})") from e
    # DataParallel-saved: module.backbone.backbone.features.* (IntermediateLayerGetter) and module.classify.*;
    # module.backbone.net.* holds the same tensors plus torchvision's unused classifier.
    prefix = "module.backbone.backbone."
    mapped = {("backbone." + k[len(prefix):]): v for k, v in state.items() if k.startswith(prefix)}
    mapped.update({k[len("module."):]: v for k, v in state.items() if k.startswith("module.classify.")})
    net = QualityFaceNet()
    net.load_state_dict(mapped, strict=True)
    return net.eval()


def face_crop(rgb: np.ndarray, face: Face, size: int = QUALITYFACE_INPUT) -> np.ndarray:
    """The face box made square (longer side, same centre), edges replicated outside the image,
    resized to size×size (area averaging when shrinking)."""
    cv2 = _cv2()
    x, y, w, h = face.box
    side = max(w, h, 1.0)
    x0, y0 = int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2))
    n = int(round(side))
    H, W = rgb.shape[:2]
    pad = max(0, -x0, -y0, x0 + n - W, y0 + n - H)
    src = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else rgb
    crop = src[y0 + pad:y0 + pad + n, x0 + pad:x0 + pad + n]
    interp = cv2.INTER_AREA if n > size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(crop, (size, size), interpolation=interp))


def qualityface_scores(crops: np.ndarray) -> np.ndarray:
    """Raw QualityFace outputs of N×128×128×3 uint8 RGB face crops (not clipped)."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.inference_mode():
        return load_qualityface()(x).double().numpy()


def qualityface_of(rgb: np.ndarray, face: Face) -> float:
    """QualityFace of one face, clipped to [0, 1]."""
    return float(np.clip(qualityface_scores(face_crop(rgb, face)[None])[0], 0.0, 1.0))


def face_box_brisque(rgb: np.ndarray, face: Face) -> float:
    """BRISQUE of the face box (clipped to the image) at the image's resolution."""
    x, y, w, h = face.box
    H, W = rgb.shape[:2]
    x0, y0 = min(max(int(round(x)), 0), W - 1), min(max(int(round(y)), 0), H - 1)
    x1, y1 = max(min(int(round(x + w)), W), x0 + 1), max(min(int(round(y + h)), H), y0 + 1)
    return brisque_score(np.ascontiguousarray(rgb[y0:y1, x0:x1]))


@dataclass
class FaceScoreResult:
    """One face-level diagnostic: ``value`` is the mean over the images with a detected face (None if none);
    ``per_image`` holds None where no face was found."""

    value: Optional[float]
    n_images: int
    n_detected: int
    backend: str
    detector: str
    per_image: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _face_scores(images: ImageBatch, score, backend: str, name: str, detector: str, threshold: float,
                 analyses: Optional[Analyses]) -> FaceScoreResult:
    rgbs = to_uint8_rgb(images)
    if not rgbs:
        raise ValueError(f"{name}: no images given")
    a = analyses or analyze_faces(rgbs, detector=detector, embedder=None, threshold=threshold)
    if len(a) != len(rgbs):
        raise ValueError(f"{name}: {len(a)} analyses for {len(rgbs)} images")
    per_image = [score(x, it.largest) if it.detected else None for x, it in zip(rgbs, a.items)]
    found = [v for v in per_image if v is not None]
    return FaceScoreResult(float(np.mean(found)) if found else None, len(rgbs), len(found), backend, a.detector,
                           per_image)


def qualityface(images: ImageBatch, detector: str = DEFAULT_DETECTOR, threshold: float = 0.9,
                analyses: Optional[Analyses] = None) -> FaceScoreResult:
    """QualityFace of each image's largest detected face (lower = worse faces = stronger protection).
    ``analyses`` (from ``analyze_faces`` on the same images) reuses their detections."""
    return _face_scores(images, qualityface_of, QUALITYFACE_BACKEND, "qualityface", detector, threshold, analyses)


def face_brisque(images: ImageBatch, detector: str = DEFAULT_DETECTOR, threshold: float = 0.9,
                 analyses: Optional[Analyses] = None) -> FaceScoreResult:
    """BRISQUE of each image's largest detected face box (higher = worse faces = stronger protection)."""
    return _face_scores(images, face_box_brisque, FACE_BRISQUE_BACKEND, "face_brisque", detector, threshold,
                        analyses)
