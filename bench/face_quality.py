"""Face-quality scores checked the standard way: SER-FIQ's fit, its response to degradation, and error-versus-discard.

1. Fit (clean faces only): the 5 sample photos of gapdiff_core/samples cut square around their MTCNN face at three
   framings (bench/metrics.py's tight/portrait/wide), each also mirrored, at --size: SER-FIQ's raw q of these 30
   clean faces gives its rescaling constants (metrics/serfiq.py: the clean mean scores 0.9, 3 sd below it 0.5).
2. Response: SER-FIQ (the constants in metrics/serfiq.py) on the sample photos as shipped (not the fit's framings),
   clean, JPEG q50/q10/q5 and Gaussian blur σ 1/2/4; the mean over MTCNN faces and its change from clean.
3. Error versus discard (Grother & Tabassi, 2007): probes = the fit's unmirrored faces under 14 conditions (clean,
   JPEG q50/30/10/5, blur σ 1/2/3/4, noise σ 10/20/30 grey levels, down-up-sampling ×4/×8); each probe compared
   with SFace (RetinaFace-MobileNet alignment) to its identity's clean photos (the other photos where the identity
   has several, else its own clean photo); a false non-match is a cosine below the threshold that makes the FNMR of
   all probes 0.2 (at OpenCV's SFace threshold 0.363 no probe fails: no curve), or no face.
   The FNMR of the probes kept after discarding the lowest-quality fraction, for SER-FIQ, QualityFace, the face
   box's BRISQUE and, as bounds, the comparison score itself (oracle) and no quality (flat). Written to --svg.

Prints the tables, then `key=value` lines. Usage: python bench/face_quality.py [--size 512] [--T 100] [--svg PATH]
[--parts fit response erc] [--framings tight portrait wide] (the probes' framings; fewer run faster)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.metrics import IDENTITIES, SAMPLES, degrade  # noqa: E402
from gapdiff_core import metrics as M  # noqa: E402
from gapdiff_core.evaluation.report.charts import svg_line_chart  # noqa: E402
from gapdiff_core.io.atomic import write_text  # noqa: E402
from gapdiff_core.metrics.face_iqa import face_box_brisque, qualityface_of  # noqa: E402
from gapdiff_core.metrics.mtcnn import MTCNNDetector  # noqa: E402
from gapdiff_core.metrics.serfiq import FIT_MEAN_Q, FIT_SD_Q  # noqa: E402

FRAMINGS = {"tight": 0.9, "portrait": 2.2, "wide": 3.5}  # as bench/metrics.py
RESPONSE = ["clean", "jpeg50", "jpeg10", "jpeg5", "blur1", "blur2", "blur4"]
PROBES = (["clean"] + [f"jpeg{q}" for q in (50, 30, 10, 5)] + [f"blur{s}" for s in (1, 2, 3, 4)]
          + [f"noise{s}" for s in (10, 20, 30)] + ["down4", "down8"])
INITIAL_FNMR = 0.2  # the comparison threshold: the genuine cosines' 20th percentile, so FNMR starts at 0.2
DISCARD = np.round(np.arange(0.0, 0.81, 0.05), 2)


def _pil(name: str):
    from PIL import Image

    return Image.open(SAMPLES / name).convert("RGB")


def mtcnn_framed(name: str, size: int, margin: float) -> np.ndarray:
    """The photo cut square around its MTCNN face (side = margin × the box's longer side), resized to size²."""
    from PIL import Image

    im = _pil(name)
    x, y, w, h = MTCNNDetector().detect(np.asarray(im))[0].box
    cx, cy, side = x + w / 2, y + h / 2, margin * max(w, h)
    box = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    return np.asarray(im.crop(box).resize((size, size), Image.LANCZOS))


def condition(x: np.ndarray, cond: str, seed: int) -> np.ndarray:
    """bench/metrics.py's degradations plus down-up-sampling ('down4': area-shrunk 4×, bilinear back)."""
    if not cond.startswith("down"):
        return degrade(x, cond, seed)
    import cv2

    k, (h, w) = int(cond[4:]), x.shape[:2]
    small = cv2.resize(x, (w // k, h // k), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def fit(size: int, T: int) -> tuple[float, float, int]:
    faces = [f for names in IDENTITIES.values() for n in names for m in FRAMINGS.values()
             for f in (mtcnn_framed(n, size, m),) for f in (f, np.ascontiguousarray(f[:, ::-1]))]
    q = np.array([v for v in M.serfiq(faces, T=T).raw_q if v is not None])
    return float(q.mean()), float(q.std(ddof=1)), len(q)


def response(T: int) -> dict[str, tuple[float, float, int]]:
    """condition -> (mean score, mean raw q, faces) over the MTCNN faces of the photos as shipped."""
    photos = [np.asarray(_pil(n)) for names in IDENTITIES.values() for n in names]
    out = {}
    for cond in RESPONSE:
        r = M.serfiq([condition(x, cond, seed=k) for k, x in enumerate(photos)], T=T)
        out[cond] = (r.value_detected_only, r.raw_q_detected_only, r.n_detected)
    return out


def erc(size: int, T: int, framings: list[str]) -> tuple[dict[str, list], dict[str, float], int, float]:
    """(curves: score -> FNMR per DISCARD fraction, areas under them, number of probes, cosine threshold)."""
    clean = {(ident, n): mtcnn_framed(n, size, FRAMINGS["portrait"]) for ident, names in IDENTITIES.items()
             for n in names}
    # each photo's reference: its identity's other clean photos, or its own where the identity has one photo
    ref = {(ident, n): M.reference_embedding([clean[(ident, o)] for o in IDENTITIES[ident] if o != n]
                                             or [clean[(ident, n)]]) for ident, n in clean}
    probes, refs, quality = [], [], {}
    for margin in (FRAMINGS[f] for f in framings):
        faces = {(ident, n): mtcnn_framed(n, size, margin) for ident, names in IDENTITIES.items() for n in names}
        for k, cond in enumerate(PROBES):
            for j, (key, x) in enumerate(faces.items()):
                probes.append(condition(x, cond, seed=100 * k + j))
                refs.append(ref[key])
    a = M.analyze_faces(probes)
    cos = np.array([float(it.embedding @ r / np.linalg.norm(it.embedding) / np.linalg.norm(r))
                    if it.detected else -1.0 for it, r in zip(a.items, refs)])
    quality["SER-FIQ"] = [-np.inf if q is None else q for q in M.serfiq(probes, T=T).raw_q]
    quality["QualityFace"] = [-np.inf if it.largest is None else qualityface_of(x, it.largest)
                              for x, it in zip(probes, a.items)]
    quality["face-box BRISQUE"] = [-np.inf if it.largest is None else -face_box_brisque(x, it.largest)
                                   for x, it in zip(probes, a.items)]
    quality["oracle (the cosine itself)"] = list(cos)
    threshold = float(np.quantile(cos, INITIAL_FNMR))
    miss = cos < threshold
    curves, areas = {}, {}
    for name, qs in quality.items():
        order = np.argsort(np.asarray(qs, np.float64), kind="stable")  # lowest quality first
        fnmr = [float(miss[order[int(round(f * len(order))):]].mean()) for f in DISCARD]
        curves[name], areas[name] = fnmr, float(np.trapezoid(fnmr, DISCARD))
    curves["no quality (flat)"] = [float(miss.mean())] * len(DISCARD)
    areas["no quality (flat)"] = float(miss.mean() * DISCARD[-1])
    return curves, areas, len(probes), threshold


def fit_part(args, kv: dict) -> None:
    mean_q, sd_q, n = fit(args.size, args.T)
    print(f"== fit on {n} clean faces: mean q {mean_q:.5f}, sd {sd_q:.5f} -> r {mean_q - 3 * sd_q:.5f}, "
          f"alpha {np.log(9) / (3 * sd_q):.1f} (in metrics/serfiq.py: mean {FIT_MEAN_Q:.5f}, sd {FIT_SD_Q:.5f})")
    kv.update(fit_mean_q=mean_q, fit_sd_q=sd_q, fit_faces=n)


def response_part(args, kv: dict) -> None:
    res = response(args.T)
    print("\n== SER-FIQ on the sample photos as shipped (MTCNN faces): condition, score, raw q, faces")
    for cond, (v, q, k) in res.items():
        print(f"{cond:<8} {v:.3f} {q:.5f} {k}")
        kv[f"serfiq_{cond}"], kv[f"serfiq_raw_q_{cond}"] = v, q
    for cond in ("jpeg5", "blur4"):
        kv[f"serfiq_drop_{cond}"] = res["clean"][0] - res[cond][0]
    print(f"drop clean -> JPEG q5 {kv['serfiq_drop_jpeg5']:.3f}, -> blur σ4 {kv['serfiq_drop_blur4']:.3f}: "
          + ("responsive (≥ 0.1 on both)" if min(kv["serfiq_drop_jpeg5"], kv["serfiq_drop_blur4"]) >= 0.1
             else "unresponsive on this backbone"))


def erc_part(args, kv: dict) -> None:
    curves, areas, n, threshold = erc(args.size, args.T, args.framings)
    print(f"\n== error versus discard: FNMR at cosine {threshold:.4f} (initial FNMR {INITIAL_FNMR}) over {n} probes, "
          "by discarded fraction")
    kv["erc_threshold"] = threshold
    print(f"{'score':<28}" + "".join(f"{f:>6.2f}" for f in DISCARD) + "   area")
    for name, c in curves.items():
        print(f"{name:<28}" + "".join(f"{v:>6.3f}" for v in c) + f"  {areas[name]:.4f}")
        key = "".join(ch if ch.isalnum() else "_" for ch in name.split(" (")[0].lower()).strip("_")
        kv[f"erc_area_{key}"], kv[f"erc_fnmr_{key}_discard_20"] = areas[name], c[4]
    if args.svg:
        series = {name: list(zip(DISCARD * 100, c)) for name, c in curves.items()}
        write_text(args.svg, svg_line_chart(series, f"Error versus discard ({n} probes, SFace, cosine ≥ "
                                            f"{threshold:.3f})", "discarded lowest-quality probes (%)",
                                            "FNMR", width=560, height=340) + "\n")
        print(f"wrote {args.svg}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--T", type=int, default=100, help="SER-FIQ stochastic passes")
    ap.add_argument("--svg", type=Path, default=None, help="write the error-versus-discard curve here")
    ap.add_argument("--parts", nargs="+", default=["fit", "response", "erc"], choices=["fit", "response", "erc"])
    ap.add_argument("--framings", nargs="+", default=list(FRAMINGS), choices=list(FRAMINGS),
                    help="the error-versus-discard probes' framings")
    args = ap.parse_args(argv)
    kv: dict[str, float] = {}
    if "fit" in args.parts:
        fit_part(args, kv)
    if "response" in args.parts:
        response_part(args, kv)
    if "erc" in args.parts:
        erc_part(args, kv)
    for k, v in kv.items():
        print(f"{k}={v:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
