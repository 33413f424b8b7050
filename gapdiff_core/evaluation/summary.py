"""The protocol's numbers: one prompt's metrics with their per-image values, the means over identities and prompts as
the official scripts average, their bootstrap 95% intervals, and paired differences against another method."""
from __future__ import annotations

from typing import Optional

from ..metrics.statistics import HierarchicalBootstrap, Interval, point_estimate

METRIC_KEYS = ("fdfr", "ism", "brisque", "serfiq")
#: summary key -> (the per-image series it is computed from, how entries combine: metrics.statistics.RULES)
STATISTICS = {
    "fdfr": ("fdfr", "mean"),  # 1 where no face
    "ism": ("ism", "detected_or_zero"),  # official: an entry without a detected face counts 0
    "ism_detected": ("ism", "pooled"),
    "brisque": ("brisque", "mean"),
    "serfiq": ("serfiq", "mean"),  # the protocol: an image without a face scores 0
    "serfiq_detected": ("serfiq", "pooled"),
    "serfiq_q": ("serfiq_q", "pooled"),  # SER-FIQ's raw q, before rescaling
    "qualityface": ("qualityface", "pooled"),  # diagnostics: over detected faces only
    "face_brisque": ("face_brisque", "pooled"),
}
SUMMARY_VERSION = 3  # bump when summarize_metrics changes: cached metrics stages are recomputed
N_BOOT = 2000
_NONE = Interval(None, None, None)


def summarize_metrics(m: dict) -> dict:
    """One prompt of one identity (an ``evaluate_images`` result): its per-image series (None where undefined:
    no face, or SER-FIQ's images without an MTCNN face), counts, and its own values of :data:`STATISTICS`."""
    fd, ism, sq = m.get("fdfr") or {}, m.get("ism"), m.get("serfiq")

    def series(result: Optional[dict], key: str = "per_image") -> Optional[list]:
        return None if result is None else list(result[key])

    per_image = {"fdfr": series(fd), "ism": series(ism), "brisque": series(m.get("brisque")),
                 "serfiq": None if sq is None else [None if q is None else s for s, q in zip(sq["per_image"],
                                                                                             sq["raw_q"])],
                 "serfiq_q": series(sq, "raw_q"), "qualityface": series(m.get("qualityface")),
                 "face_brisque": series(m.get("face_brisque"))}
    entry = {"per_image": per_image, "has_reference": ism is not None, "n_images": m.get("n_images"),
             "n_faces": fd.get("n_images", 0) - fd.get("n_failed", 0)}
    return {**combine_metrics([entry]), **entry}


def _values(groups: list[list[dict]], series: str) -> Optional[list[list[list]]]:
    """values[identity][stratum] of one per-image series; None when an entry lacks it (e.g. ISM without a
    reference)."""
    out = [[e["per_image"].get(series) for e in g] for g in groups]
    return None if any(v is None for row in out for v in row) else out


def _plan(groups: list[list[dict]], seed: int, n_boot: int) -> HierarchicalBootstrap:
    return HierarchicalBootstrap([[len(e["per_image"]["fdfr"]) for e in g] for g in groups], n_boot, seed)


def combine_metrics(entries: list) -> dict:
    """Means over (identity, prompt) entries of :func:`summarize_metrics`, as the official scripts average
    (:data:`STATISTICS`): FDFR, BRISQUE and SER-FIQ, the mean of the entries; ISM, the mean of the entries, one
    without a detected face counting 0 (the official ``full_ism_fdfr.py`` divides by all identities), None when
    no entry had a reference; the ``*_detected`` means, SER-FIQ's raw q and the face diagnostics pooled over the
    detected faces of all entries (None without faces)."""
    return {k: v.value for k, v in metric_intervals([[e] for e in entries], n_boot=0).items()}


def metric_intervals(groups: list[list[dict]], seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """Every statistic of ``groups`` (identities, each a list of entries, one per prompt in the same order) with
    its bootstrap 95% interval over identities and images (``Interval``; n_boot 0: the values alone)."""
    plan = _plan(groups, seed, n_boot) if n_boot else None
    out = {}
    for key, (series, rule) in STATISTICS.items():
        values = _values(groups, series)
        if values is None:
            out[key] = _NONE
        else:
            out[key] = plan.interval(values, rule) if plan else Interval(point_estimate(values, rule), None, None)
    return out


def paired_differences(groups: list[list[dict]], baseline: list[list[dict]], seed: int = 0,
                       n_boot: int = N_BOOT) -> Optional[dict]:
    """statistic(groups) - statistic(baseline) with its bootstrap 95% interval, for every statistic, resampling
    both with the same draws: the identities, prompts and images of the two correspond (the same generation seeds).
    None when their shapes differ (the images cannot be paired)."""
    sizes = [[len(e["per_image"]["fdfr"]) for e in g] for g in groups]
    if sizes != [[len(e["per_image"]["fdfr"]) for e in g] for g in baseline]:
        return None
    plan = _plan(groups, seed, n_boot)
    out = {}
    for key, (series, rule) in STATISTICS.items():
        a, b = _values(groups, series), _values(baseline, series)
        out[key] = _NONE if a is None or b is None else plan.paired_difference(a, b, rule)
    return out
