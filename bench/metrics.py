"""Validity table of the protection metrics: does each one move, and which way, when face photos get worse?

Faces: the sample photos shipped in gapdiff_core/samples (from the face_recognition sdist and scikit-image),
each cut square around its face and resized to --size, in three framings: tight (the square is 0.9 × the YuNet
face box: brow and chin touch the edges, as in tightly cropped dataset photos), portrait (face ≈ 45 % of the
side) and wide (≈ 29 %).
Conditions: clean, JPEG q90/70/50/30/10/5, Gaussian blur σ 1/2/4 px, Gaussian noise σ 10/30 grey levels.
Metrics (detector threshold 0.9): FDFR with YuNet and with RetinaFace-MobileNet; on the faces --detector finds
(default RetinaFace-MobileNet, which still finds faces YuNet loses): ISM (SFace, reference = each identity's
clean photos; official mean, identities without a face count 0, and the mean over detected faces), the two face
diagnostics (QualityFace, the face box's BRISQUE; over detected faces); SER-FIQ on SFace with its own MTCNN faces
(detected-only and protocol mean, and the raw q); BRISQUE (whole image).
Also the detection rate on the clean photos (the detector's floor) and seconds per image of each metric.

Prints one table per framing, then `key=value` lines. Usage: python bench/metrics.py [--size 512] [--T 100]
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gapdiff_core import metrics as M  # noqa: E402
from gapdiff_core.metrics.directions import METRICS  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "gapdiff_core" / "samples"
IDENTITIES = {"obama": ["obama.jpg", "obama2.jpg", "obama3.jpg"], "biden": ["biden.jpg"],
              "astronaut": ["astronaut.png"]}
FRAMINGS = {"tight": 0.9, "portrait": 2.2, "wide": 3.5}  # square side / face box side
CONDITIONS = (["clean"] + [f"jpeg{q}" for q in (90, 70, 50, 30, 10, 5)] + [f"blur{s}" for s in (1, 2, 4)]
              + [f"noise{s}" for s in (10, 30)])
# name, the protocol metric it measures (its arrow, from metrics.directions, is the direction of stronger
# protection, i.e. of worse faces), format
ROWS = [("fdfr_yunet", "fdfr", ".2f"), ("fdfr_retinaface", "fdfr", ".2f"), ("ism_official", "ism", ".3f"),
        ("ism_detected", "ism", ".3f"), ("brisque", "brisque", ".1f"), ("qualityface", "qualityface", ".3f"),
        ("face_brisque", "face_brisque", ".1f"), ("serfiq_detected", "serfiq", ".3f"),
        ("serfiq_protocol", "serfiq", ".3f"), ("serfiq_raw_q", "serfiq", ".4f")]


def framed(name: str, size: int, margin: float) -> np.ndarray:
    """The photo cut square around its largest face (side = margin × the face box), resized to size²."""
    im = Image.open(SAMPLES / name).convert("RGB")
    face = max(M.get_detector(threshold=0.5).detect(np.asarray(im)), key=lambda f: f.area)
    x, y, w, h = face.box
    cx, cy, side = x + w / 2, y + h / 2, margin * max(w, h)
    box = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    return np.asarray(im.crop(box).resize((size, size), Image.LANCZOS))


def degrade(x: np.ndarray, condition: str, seed: int) -> np.ndarray:
    import cv2

    if condition == "clean":
        return x
    if condition.startswith("jpeg"):
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, "JPEG", quality=int(condition[4:]))
        return np.asarray(Image.open(buf).convert("RGB"))
    if condition.startswith("blur"):
        return cv2.GaussianBlur(x, (0, 0), float(condition[4:]))
    sigma = float(condition[5:])
    noisy = x + np.random.default_rng(seed).normal(0.0, sigma, x.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


class Timer:
    def __init__(self):
        self.seconds, self.images = defaultdict(float), defaultdict(int)

    def __call__(self, key: str, n: int, fn):
        t = time.perf_counter()
        out = fn()
        self.seconds[key] += time.perf_counter() - t
        self.images[key] += n
        return out


def score_condition(photos: dict[str, list[np.ndarray]], refs: dict[str, np.ndarray], condition: str,
                    T: int, detector: str, timer: Timer) -> dict[str, float]:
    names = [(ident, i) for ident, xs in photos.items() for i in range(len(xs))]
    imgs = [degrade(photos[ident][i], condition, seed=k) for k, (ident, i) in enumerate(names)]
    n = len(imgs)
    yunet = timer("detect (yunet)", n, lambda: M.fdfr(imgs, backend="yunet"))
    retina = timer("detect (retinaface-mobilenet)", n, lambda: M.fdfr(imgs, backend="retinaface-mobilenet"))
    a = timer(f"detect+embed ({detector}, sface)", n,
              lambda: M.analyze_faces(imgs, detector=detector, embedder="sface"))
    per_ident = []
    for ident in photos:
        idx = [k for k, (name, _) in enumerate(names) if name == ident]
        sub = M.Analyses([a.items[k] for k in idx], a.detector, a.embedder, a.threshold)
        per_ident.append(M.ism([imgs[k] for k in idx], refs[ident], analyses=sub))
    ism = M.ism_across_identities(per_ident)
    q = timer("qualityface", n, lambda: M.qualityface(imgs, analyses=a))
    fb = timer("face-box brisque", n, lambda: M.face_brisque(imgs, analyses=a))
    s = timer(f"ser-fiq T={T} (mtcnn)", n, lambda: M.serfiq(imgs, T=T))
    b = timer("brisque", n, lambda: M.brisque(imgs))
    nan = float("nan")
    return {"fdfr_yunet": yunet.value, "fdfr_retinaface": retina.value,
            "ism_official": ism.value, "ism_detected": nan if ism.value_detected_faces is None else ism.value_detected_faces,
            "brisque": b.value, "qualityface": nan if q.value is None else q.value,
            "face_brisque": nan if fb.value is None else fb.value,
            "serfiq_detected": nan if s.value_detected_only is None else s.value_detected_only,
            "serfiq_protocol": s.value, "serfiq_raw_q": nan if s.raw_q_detected_only is None else s.raw_q_detected_only}


def print_table(framing: str, table: dict[str, dict[str, float]], n: int) -> None:
    print(f"\n== {framing}: {n} faces; columns = condition, last two = change from clean (Δq5, Δσ4); "
          "arrow = direction expected as faces get worse")
    cols = [c.replace("jpeg", "q").replace("blur", "σb").replace("noise", "σn") for c in CONDITIONS]
    print(f"{'metric':<18}" + "".join(f"{c:>7}" for c in cols) + f"{'Δq5':>8}{'Δσ4':>8}")
    for name, metric, fmt in ROWS:
        vals = [table[c][name] for c in CONDITIONS]
        d5, d4 = table["jpeg5"][name] - table["clean"][name], table["blur4"][name] - table["clean"][name]
        print(f"{name + ' ' + METRICS[metric].arrow:<18}" + "".join(f"{v:>7{fmt}}" for v in vals) + f"{d5:>+8{fmt}}{d4:>+8{fmt}}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--T", type=int, default=100, help="SER-FIQ stochastic passes")
    ap.add_argument("--framings", nargs="+", default=list(FRAMINGS), choices=list(FRAMINGS))
    ap.add_argument("--detector", default="retinaface-mobilenet", help="detector for ISM and the face diagnostics")
    args = ap.parse_args(argv)
    timer = Timer()
    kv: dict[str, float] = {}
    for framing in args.framings:
        photos = {ident: [framed(n, args.size, FRAMINGS[framing]) for n in names]
                  for ident, names in IDENTITIES.items()}
        refs = {ident: M.reference_embedding(xs, detector=args.detector) for ident, xs in photos.items()}
        clean = [x for xs in photos.values() for x in xs]
        for det in ("yunet", "retinaface-mobilenet"):
            r = M.reference_detection_rate(clean, backend=det)
            kv[f"{framing}_detection_rate_clean_{det.split('-')[0]}"] = r.value
        table = {c: score_condition(photos, refs, c, args.T, args.detector, timer) for c in CONDITIONS}
        print_table(framing, table, len(clean))
        sys.stdout.flush()
        for name, _, _ in ROWS:
            kv[f"{framing}_{name}_clean"] = table["clean"][name]
            kv[f"{framing}_{name}_drop_jpeg5"] = table["clean"][name] - table["jpeg5"][name]
            kv[f"{framing}_{name}_drop_blur4"] = table["clean"][name] - table["blur4"][name]
            kv[f"{framing}_{name}_drop_noise30"] = table["clean"][name] - table["noise30"][name]
    print(f"\nISM and the face diagnostics on {args.detector} detections; {M.serfiq_backend()}")
    print("seconds per image: " + ", ".join(f"{k} {timer.seconds[k] / timer.images[k]:.3f}" for k in timer.seconds))
    for k, v in kv.items():
        print(f"{k}={v:.4f}")
    for k in timer.seconds:
        key = "".join(ch if ch.isalnum() else "_" for ch in k).strip("_")
        print(f"sec_per_image_{key}={timer.seconds[k] / timer.images[k]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
