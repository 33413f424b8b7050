"""MTCNN face detector (Zhang et al., 2016), the detector and aligner of SER-FIQ's reference code.

The three networks and their weights are facenet-pytorch's (MIT; ``pnet.pt``, ``rnet.pt``, ``onet.pt`` ship in its
wheel). Its package imports torchvision and pins an old torch, so it is never installed: the weight files are copied
out of its wheel (:mod:`.face_models`) and read (``weights_only``, no pickled code runs)
into the same layers here, and the cascade is written out below as facenet-pytorch's ``detect_face`` runs it for one
image: a scale pyramid through P-Net (NMS 0.5 per scale, 0.7 across), R-Net on 24×24 crops (NMS 0.7), O-Net on
48×48 crops with the 5 landmarks (NMS 0.7, overlap over the smaller box). Settings as SER-FIQ's ``MtcnnDetector``:
smallest face 20 px, scale factor 0.709, thresholds 0.6 / 0.7 / 0.8.
"""
from __future__ import annotations

import functools
import io
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.nn.functional import interpolate

from .face_models import FETCH_COMMAND, BackendUnavailable, model_bytes
from .faces import Face

FACENET_PYTORCH_VERSION = "2.6.0"
DESCRIPTION = (f"MTCNN (facenet-pytorch {FACENET_PYTORCH_VERSION} weights, MIT), min face 20 px, factor 0.709, "
               "thresholds 0.6/0.7/0.8 as SER-FIQ's reference code")


def _stage(layers: list[tuple[str, nn.Module]]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


def _conv(i: int, c_in: int, c_out: int, k: int, pool: tuple[int, int] | None) -> list[tuple[str, nn.Module]]:
    out = [(f"conv{i}", nn.Conv2d(c_in, c_out, k)), (f"prelu{i}", nn.PReLU(c_out))]
    return out + ([(f"pool{i}", nn.MaxPool2d(*pool, ceil_mode=True))] if pool else [])


class PNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = _stage(_conv(1, 3, 10, 3, (2, 2)) + _conv(2, 10, 16, 3, None) + _conv(3, 16, 32, 3, None))
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.trunk(x)
        return self.conv4_2(x), self.conv4_1(x).softmax(1)


class RNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = _stage(_conv(1, 3, 28, 3, (3, 2)) + _conv(2, 28, 48, 3, (3, 2)) + _conv(3, 48, 64, 2, None))
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x):
        x = self.prelu4(self.dense4(self.trunk(x).permute(0, 3, 2, 1).flatten(1)))
        return self.dense5_2(x), self.dense5_1(x).softmax(1)


class ONet(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = _stage(_conv(1, 3, 32, 3, (3, 2)) + _conv(2, 32, 64, 3, (3, 2)) + _conv(3, 64, 64, 3, (2, 2))
                            + _conv(4, 64, 128, 2, None))
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = self.prelu5(self.dense5(self.trunk(x).permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(1)


@functools.lru_cache(maxsize=1)
def load_mtcnn() -> tuple[PNet, RNet, ONet]:
    """The three networks with facenet-pytorch's weights (copied out of its wheel, :mod:`.face_models`), in eval
    mode (loaded once)."""
    nets = []
    for name, net in (("pnet", PNet()), ("rnet", RNet()), ("onet", ONet())):
        data = model_bytes(f"mtcnn-{name}")
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - an unreadable file gets the same clear message
            raise BackendUnavailable(f"cannot read the MTCNN {name} weights ({e}); run `{FETCH_COMMAND}`") from e
        names = net.state_dict()
        net.load_state_dict({(f"trunk.{k}" if f"trunk.{k}" in names else k): v for k, v in state.items()}, strict=True)
        nets.append(net.eval())
    return tuple(nets)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, overlap: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression of x1,y1,x2,y2 boxes (inclusive pixel corners, as MTCNN's code); indices kept,
    best first. ``overlap``: intersection over the union, or over the smaller box ("min")."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = np.argsort(scores)[::-1], []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if overlap == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, np.int64)


def _square(b: np.ndarray) -> np.ndarray:
    """Boxes made square around their centres (side = the longer side), as MTCNN's ``rerec``."""
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = np.maximum(w, h)
    b = b.copy()
    b[:, 0], b[:, 1] = b[:, 0] + w / 2 - side / 2, b[:, 1] + h / 2 - side / 2
    b[:, 2], b[:, 3] = b[:, 0] + side, b[:, 1] + side
    return b


def _regress(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    w, h = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
    b = b.copy()
    b[:, :4] += reg * np.stack([w, h, w, h], 1)
    return b


def _crops(img: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """Each box cut from the 1×3×H×W image (clipped to it, as MTCNN's ``pad``) and area-resized to size², scaled."""
    H, W = img.shape[2:]
    out = []
    for x, y, ex, ey in boxes[:, :4].astype(np.int64):  # trunc toward zero, as the reference code
        x, y, ex, ey = max(x, 1), max(y, 1), min(ex, W), min(ey, H)
        out.append(interpolate(img[:, :, y - 1:ey, x - 1:ex], size=(size, size), mode="area"))
    return (torch.cat(out) - 127.5) * 0.0078125


def _keep_valid(boxes: np.ndarray, W: int, H: int) -> np.ndarray:
    """Boxes whose clipped crop is not empty (the reference code skips the others)."""
    x, y = np.maximum(boxes[:, 0].astype(np.int64), 1), np.maximum(boxes[:, 1].astype(np.int64), 1)
    ex, ey = np.minimum(boxes[:, 2].astype(np.int64), W), np.minimum(boxes[:, 3].astype(np.int64), H)
    return boxes[(ey > y - 1) & (ex > x - 1)]


class MTCNNDetector:
    """Detects faces with MTCNN; ``detect(rgb)`` returns the faces (best score first) with their 5 landmarks."""

    description = DESCRIPTION

    def __init__(self, min_size: int = 20, factor: float = 0.709, thresholds: tuple = (0.6, 0.7, 0.8)):
        self.min_size, self.factor, self.thresholds = min_size, factor, thresholds

    @torch.inference_mode()
    def detect(self, rgb: np.ndarray) -> list[Face]:
        pnet, rnet, onet = load_mtcnn()
        img = torch.from_numpy(np.array(rgb, np.float32)).permute(2, 0, 1)[None]
        H, W = rgb.shape[:2]
        scale, side, found = 12.0 / self.min_size, min(H, W) * 12.0 / self.min_size, []
        while side >= 12:
            x = (interpolate(img, size=(int(H * scale + 1), int(W * scale + 1)), mode="area") - 127.5) * 0.0078125
            reg, prob = pnet(x)
            ys, xs = np.nonzero(prob[0, 1].numpy() >= self.thresholds[0])
            cells = np.stack([xs, ys], 1).astype(np.float64)
            b = np.concatenate([np.floor((2 * cells + 1) / scale), np.floor((2 * cells + 12) / scale),
                                prob[0, 1].numpy()[ys, xs, None], reg[0].numpy()[:, ys, xs].T], 1)
            found.append(b[nms(b[:, :4], b[:, 4], 0.5)])
            scale, side = scale * self.factor, side * self.factor
        b = np.concatenate(found) if found else np.zeros((0, 9))
        b = b[nms(b[:, :4], b[:, 4], 0.7)]
        b = _keep_valid(_square(_regress(b[:, :5], b[:, 5:9])), W, H)
        if len(b):
            reg, prob = rnet(_crops(img, b, 24))
            ok = prob[:, 1].numpy() > self.thresholds[1]
            b = np.concatenate([b[ok, :4], prob[:, 1].numpy()[ok, None]], 1)
            keep = nms(b[:, :4], b[:, 4], 0.7)
            b = _keep_valid(_square(_regress(b[keep], reg.numpy()[ok][keep])), W, H)
        if not len(b):
            return []
        reg, points, prob = onet(_crops(img, b, 48))
        ok = prob[:, 1].numpy() > self.thresholds[2]
        b = np.concatenate([b[ok, :4], prob[:, 1].numpy()[ok, None]], 1)
        w, h, p = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1, points.numpy()[ok]
        marks = np.stack([w[:, None] * p[:, :5] + b[:, :1] - 1, h[:, None] * p[:, 5:] + b[:, 1:2] - 1], 2)
        b = _regress(b, reg.numpy()[ok])
        keep = nms(b[:, :4], b[:, 4], 0.7, overlap="min")
        return [Face((float(x1), float(y1), float(x2 - x1), float(y2 - y1)), marks[i].astype(np.float32), float(s))
                for i, (x1, y1, x2, y2, s) in zip(keep, b[keep])]
