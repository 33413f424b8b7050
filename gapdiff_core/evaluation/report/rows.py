"""The rows every report shows: one per method × transform, the metrics averaged as the official scripts do, and the
columns of its tables (labels and arrows from :mod:`gapdiff_core.metrics.directions`)."""
from __future__ import annotations

import math
from typing import Optional

from ...metrics.directions import METRICS, PROTOCOL_METRICS, format_value
from ..summary import combine_metrics


def _heading(key: str) -> str:
    """A summary column's heading: "ism" -> "ISM↓", "ism_detected" -> "ISM↓ (detected faces)"."""
    base = key.removesuffix("_detected")
    return METRICS[base].heading + (" (detected faces)" if key != base else "")


#: (key, heading) of the paper's four metrics, the column group of each prompt: FDFR↑ ISM↓ BRISQUE↑ SER-FIQ↓
PROTOCOL_COLUMNS = tuple((k, METRICS[k].heading) for k in PROTOCOL_METRICS)
#: (key, heading) of the summary's columns: the protocol means and the means over detected faces only
SUMMARY_COLUMNS = tuple((k, _heading(k)) for k in ("fdfr", "ism", "ism_detected", "brisque", "serfiq",
                                                    "serfiq_detected", "face_quality", "face_quality_detected"))
GAIN_HEADING = METRICS["identity_gain"].heading  # "identity gain↓"
TOY_GAIN = "n/a (toy model)"
SUMMARY_NOTE = ("ISM, SER-FIQ and the face quality (the lower of the learned QualityFace score and the face's "
                "1 - BRISQUE/100) as in the protocol (an image or identity without a detected face counts 0), and "
                "over the detected faces only. Identity gain: the attacked model's denoising error on the identity's "
                "clean reference photos (set_C) with the class prompt minus that with the instance prompt (the same "
                "noise and timesteps for both prompts and every model), divided by that of the model attacked with "
                "the clean photos through the same transform; 1 = the attacker learnt the identity as well as from "
                "clean photos, lower = stronger protection (none is 1 by construction; compare with random-noise at "
                "the same budget). A toy model learns no identity: its gain is n/a.")


def _mean(values):
    vals = [v for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def aggregate(results: dict) -> list[dict]:
    """One row per (method, transform): metrics per prompt and their mean over identities and prompts, as the
    official scripts average (:func:`gapdiff_core.evaluation.combine_metrics`); the relative identity gain averaged
    over identities (None on a toy model); fidelity of the protected photos (and after the transform) vs the clean
    ones."""
    groups: dict = {}
    for run in results["runs"]:
        groups.setdefault((run["method"], run["transform"]), []).append(run)
    rows = []
    for (method, transform), runs in groups.items():
        per_prompt = {p: combine_metrics([r["metrics"][p] for r in runs if p in r["metrics"]])
                      for p in results["prompts"]}
        gains = [r.get("identity_gain") or {} for r in runs]
        rows.append({
            "method": method, "transform": transform, "budget": runs[0]["budget"],
            "method_spec": runs[0]["method_spec"], "identities": [r["identity"] for r in runs],
            "per_prompt": per_prompt,
            "mean": combine_metrics([e for r in runs for e in r["metrics"].values()]),
            "identity_gain": None if toy_model(results) else _mean(x.get("relative") for x in gains),
            "identity_gain_raw": _mean(x.get("gain") for x in gains),
            "psnr_db": _psnr(r["fidelity"] for r in runs),
            "ssim": _mean(r["fidelity"].get("ssim") for r in runs),
            "linf": max((r["fidelity"].get("linf_grey_levels") or 0.0) for r in runs),
            "psnr_after_transform_db": _psnr(r["fidelity_after_transform"] for r in runs),
        })
    return rows


def _psnr(fidelities) -> Optional[float]:
    """Mean PSNR; ∞ when every photo is unchanged (JSON stores that as null with L∞ 0)."""
    fs = list(fidelities)
    if fs and all(f.get("linf_grey_levels") == 0 and (f.get("psnr_db") is None or f.get("psnr_db") == math.inf)
                  for f in fs):
        return math.inf
    return _mean(f.get("psnr_db") for f in fs)


def toy_model(results: dict) -> bool:
    """Whether the attacked diffusion model is a toy (the tiny random model): it learns no identity."""
    return any(r.get("model_is_demo") for r in results["runs"])


def gain_text(row: dict, results: dict) -> str:
    """A row's identity gain for a table: n/a (toy model) on a toy model, where it cannot mean anything."""
    return TOY_GAIN if toy_model(results) else format_value(row["identity_gain"])


def no_face_note(rows: list[dict]) -> str:
    """Why ISM is undefined and SER-FIQ 0 when no generated image had a detectable face (else empty)."""
    if rows and all(v.get("fdfr") == 1.0 for r in rows for v in r["per_prompt"].values()):
        return ("No face was detected in any generated image (FDFR 1.000 everywhere), so ISM, SER-FIQ and the face "
                "quality count 0, as in the protocol, and their means over detected faces are undefined (n/a). "
                "Expected with the tiny random model: it cannot learn a face from a few photos in a few steps.")
    return ""

