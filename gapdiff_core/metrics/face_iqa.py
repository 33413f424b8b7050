"""Face image quality on detected faces: the worse of a learned face-scale score and a native-resolution one.

* **QualityFace** (the ``qualityface`` wheel, MIT; github.com/siriusdemon/pytorch-QualityFace): torchvision's
  MobileNetV2 ``features`` -> global mean -> Linear(1280, 1), trained on WIDER FACE crops at 128×128 with inputs
  normalised to [-1, 1]; about 0.9 for a sharp face, falling with blur and noise. Its package imports torchvision,
  so only its checkpoint is used: the weights load (``weights_only``, no pickled code runs) into this project's
  MobileNetV2 (``mobilenet_v2.py``). The face is the detector's box made square (side = the longer side, centred),
  border pixels replicated where it leaves the image, resized to 128×128.
* **Face naturalness**: ``1 - BRISQUE/100`` (clipped to [0, 1]) of the detector's face box at the image's own
  resolution (the box clipped to the image).

Why both: at 128 px a large face is shrunk several times, which hides JPEG blocking. Measured on the sample faces
at 512² (``bench/metrics.py``): with the face filling the frame, QualityFace reads 0.909 clean and 0.912 after
JPEG q5, while the face's BRISQUE rises from 49 to 83. BRISQUE alone knows nothing of faces (pose, occlusion,
a face-like blur), which QualityFace was trained on. A face's score is the lower of the two; both are reported.

Scores are in [0, 1]. Protocol mean: images without a detected face score 0 and count (as SER-FIQ in GAP-Diff's
code); ``value_detected_only`` averages the detected faces alone, so quality is not confused with FDFR.
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
BACKEND = (f"min(QualityFace MobileNetV2 regressor (qualityface {QUALITYFACE_VERSION} checkpoint, WIDER FACE, MIT) "
           f"on the detector's square face box at {QUALITYFACE_INPUT}×{QUALITYFACE_INPUT}, "
           "1 - BRISQUE/100 of the face box at the image's resolution)")


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


def face_naturalness(rgb: np.ndarray, face: Face) -> float:
    """``1 - BRISQUE/100`` of the face box (clipped to the image) at the image's resolution, clipped to [0, 1]."""
    x, y, w, h = face.box
    H, W = rgb.shape[:2]
    x0, y0 = min(max(int(round(x)), 0), W - 1), min(max(int(round(y)), 0), H - 1)
    x1, y1 = max(min(int(round(x + w)), W), x0 + 1), max(min(int(round(y + h)), H), y0 + 1)
    return float(np.clip(1.0 - brisque_score(np.ascontiguousarray(rgb[y0:y1, x0:x1])) / 100.0, 0.0, 1.0))


def _mean(values: list) -> Optional[float]:
    return float(np.mean(values)) if values else None


@dataclass
class FaceQualityResult:
    """Mean face quality in [0, 1] (lower = worse faces = stronger protection).

    ``value``: protocol mean, undetected faces count as 0. ``value_detected_only``: mean over the images with a
    detected face (None if none). ``per_image`` is min(``per_image_learned``, ``per_image_naturalness``), None where
    no face was found; ``learned_detected_only`` / ``naturalness_detected_only`` are the two parts' means."""

    value: float
    value_detected_only: Optional[float]
    learned_detected_only: Optional[float]
    naturalness_detected_only: Optional[float]
    n_images: int
    n_detected: int
    backend: str
    detector: str
    threshold: float
    per_image: list = field(default_factory=list)
    per_image_learned: list = field(default_factory=list)  # QualityFace, clipped to [0, 1]
    per_image_naturalness: list = field(default_factory=list)  # 1 - BRISQUE/100 of the face box

    def to_dict(self) -> dict:
        return asdict(self)


def face_quality(images: ImageBatch, detector: str = DEFAULT_DETECTOR, threshold: float = 0.9,
                 analyses: Optional[Analyses] = None) -> FaceQualityResult:
    """Quality of each image's largest detected face: the lower of QualityFace and the face's naturalness.
    ``analyses`` (from ``analyze_faces`` on the same images) reuses their detections."""
    rgbs = to_uint8_rgb(images)
    if not rgbs:
        raise ValueError("face_quality: no images given")
    a = analyses or analyze_faces(rgbs, detector=detector, embedder=None, threshold=threshold)
    if len(a) != len(rgbs):
        raise ValueError(f"face_quality: {len(a)} analyses for {len(rgbs)} images")
    found = [i for i, it in enumerate(a.items) if it.detected]
    learned: list = [None] * len(rgbs)
    natural: list = [None] * len(rgbs)
    if found:
        raw = qualityface_scores(np.stack([face_crop(rgbs[i], a.items[i].largest) for i in found]))
        for i, s in zip(found, np.clip(raw, 0.0, 1.0)):
            learned[i] = float(s)
            natural[i] = face_naturalness(rgbs[i], a.items[i].largest)
    per_image = [None if q is None else min(q, n) for q, n in zip(learned, natural)]
    detected = [s for s in per_image if s is not None]
    return FaceQualityResult(float(sum(detected) / len(rgbs)), _mean(detected),
                             _mean([s for s in learned if s is not None]), _mean([s for s in natural if s is not None]),
                             len(rgbs), len(detected), BACKEND, a.detector, a.threshold, per_image, learned, natural)
