"""The protocol's numbers: one prompt's metrics summarised, and means over identities and prompts as the official
scripts average."""
from __future__ import annotations

import math

METRIC_KEYS = ("fdfr", "ism", "brisque", "serfiq")
QUALITY_KEYS = ("serfiq", "face_quality")  # face-quality scores: a protocol mean and a detected-only mean each
SUMMARY_VERSION = 2  # bump when summarize_metrics changes: cached metrics stages are recomputed


def summarize_metrics(m: dict) -> dict:
    """One prompt of one identity: the protocol's numbers and counts of an ``evaluate_images`` result.

    ``ism`` is the mean cosine over the images with a detected face (None without any, or without a reference);
    the face-quality scores (``serfiq``, the paper's; ``face_quality``, the lower of QualityFace and the face's naturalness) count images without a
    face as 0 (the protocol) and their ``*_detected`` twins average the detected faces only.
    """
    fd, ism = m.get("fdfr") or {}, m.get("ism")
    out = {"fdfr": fd.get("value"), "ism": None if ism is None else ism.get("value"),
           "brisque": (m.get("brisque") or {}).get("value")}
    for k in QUALITY_KEYS:
        q = m.get(k)
        out[k], out[f"{k}_detected"] = (None, None) if q is None else (q.get("value"), q.get("value_detected_only"))
    return {**out, "has_reference": ism is not None, "n_images": m.get("n_images"),
            "n_faces": fd.get("n_images", 0) - fd.get("n_failed", 0)}


def combine_metrics(entries: list) -> dict:
    """Means over (identity, prompt) entries of :func:`summarize_metrics`, as the official scripts average:

    - FDFR, BRISQUE, the face-quality scores: the mean of the entries (undefined ones skipped);
    - ISM: an entry without a detected face counts 0 and still counts (the official ``full_ism_fdfr.py``
      divides by all identities); None when no entry had a reference embedding;
    - ``ism_detected`` and the face-quality scores' ``*_detected``: pooled over the detected faces of all entries
      (None without faces).
    """
    from ..metrics.identity import ism_across_identities  # imports the face backends: slow

    def finite(v):
        return v is not None and math.isfinite(v)

    def mean(vals):
        vals = [v for v in vals if finite(v)]
        return sum(vals) / len(vals) if vals else None

    def pooled(key):  # each entry weighted by its number of detected faces
        pairs = [(e.get(key), e.get("n_faces") or 0) for e in entries]
        pairs = [(v, n) for v, n in pairs if finite(v) and n > 0]
        return sum(v * n for v, n in pairs) / sum(n for _, n in pairs) if pairs else None

    with_ref = [e for e in entries if e.get("has_reference")]
    ism = ism_across_identities([{"value": e.get("ism"), "n_detected": e.get("n_faces")} for e in with_ref]) \
        if with_ref else None
    out = {"fdfr": mean(e.get("fdfr") for e in entries), "ism": None if ism is None else ism.value,
           "brisque": mean(e.get("brisque") for e in entries),
           "ism_detected": None if ism is None else ism.value_detected_faces}
    for k in QUALITY_KEYS:
        out[k], out[f"{k}_detected"] = mean(e.get(k) for e in entries), pooled(f"{k}_detected")
    return out
