"""Seconds per 512×512 image of each protection metric (FDFR, ISM, BRISQUE, SER-FIQ) and of all four
together through `evaluate_images` (one detection per image shared), on the shipped sample photos.

Prints a table, then `key=value` lines. Usage: python bench/metrics.py [--size 512] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gapdiff_core import metrics as M  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "gapdiff_core" / "samples"


def portraits(size: int) -> list[np.ndarray]:
    """Every sample photo as a size×size crop centred on its largest face (like a generated portrait)."""
    out = []
    for p in sorted(SAMPLES.glob("*.jpg")) + sorted(SAMPLES.glob("*.png")):
        im = Image.open(p).convert("RGB")
        found = M.get_detector().detect(np.asarray(im))
        if found:
            x, y, w, h = max(found, key=lambda f: f.area).box
            cx, cy, side = x + w / 2, y + h / 2, 2.2 * max(w, h)
            im = im.crop(tuple(int(v) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)))
        out.append(np.asarray(im.resize((size, size), Image.LANCZOS)))
    return out


def per_image(fn, n_images: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best / n_images


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the fastest counts")
    ap.add_argument("--T", type=int, default=100, help="SER-FIQ stochastic passes")
    args = ap.parse_args(argv)
    imgs = portraits(args.size)
    ref = M.reference_embedding(imgs[:2])  # any fixed reference; only the speed matters here
    M.evaluate_images(imgs[:1], ref, serfiq_T=args.T)  # load and warm every model once
    n = len(imgs)
    rows = {
        "fdfr": per_image(lambda: M.fdfr(imgs), n, args.repeats),
        "ism": per_image(lambda: M.ism(imgs, ref), n, args.repeats),
        "brisque": per_image(lambda: M.brisque(imgs), n, args.repeats),
        "serfiq": per_image(lambda: M.serfiq(imgs, T=args.T), n, args.repeats),
        "all": per_image(lambda: M.evaluate_images(imgs, ref, serfiq_T=args.T), n, args.repeats),
    }
    import cv2
    import torch

    print(f"{n} photos at {args.size}×{args.size}, best of {args.repeats}; "
          f"cv2 {cv2.__version__} threads {cv2.getNumThreads()}, torch threads {torch.get_num_threads()}")
    print("backends: detector yunet, embedder sface, " + M.brisque_iqa.brisque_backend())
    print(f"{'metric':<10}{'s / image':>10}")
    for k, v in rows.items():
        label = "all four" if k == "all" else k
        print(f"{label:<10}{v:>10.3f}")
    print(f"images={n}")
    for k, v in rows.items():
        print(f"sec_per_image_{k}={v:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
