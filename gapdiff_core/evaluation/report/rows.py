"""The rows every report shows: one per method × transform, the metrics averaged as the official scripts do with
their bootstrap 95% intervals and paired differences against `none`, and the columns of its tables (labels and
arrows from :mod:`gapdiff_core.metrics.directions`)."""
from __future__ import annotations

import math
from typing import Optional

from ...metrics.directions import METRICS, PROTOCOL_METRICS, format_value
from ...metrics.serfiq import NOT_COMPARABLE, SERFIQ_RESPONSE, SERFIQ_RESPONSIVE
from ...metrics.statistics import HierarchicalBootstrap
from ..summary import N_BOOT, metric_intervals, paired_differences

#: next to SER-FIQ's values when it did not fall by 0.1 from clean to JPEG q5 and to blur σ 4 (metrics/serfiq.py)
SERFIQ_LABEL = "" if SERFIQ_RESPONSIVE else " (unresponsive on this backbone)"


def _heading(key: str) -> str:
    """A column's heading: "ism" -> "ISM↓", "ism_detected" -> "ISM↓ (detected faces)"; SER-FIQ's with its label."""
    if key == "serfiq_q":
        return f"{METRICS['serfiq'].label} raw q{METRICS['serfiq'].arrow} (detected faces)" + SERFIQ_LABEL
    base = key.removesuffix("_detected")
    return (METRICS[base].heading + (" (detected faces)" if key != base else "")
            + (SERFIQ_LABEL if base == "serfiq" else ""))


#: (key, heading) of the paper's four metrics, the column group of each prompt: FDFR↑ ISM↓ BRISQUE↑ SER-FIQ↓
PROTOCOL_COLUMNS = tuple((k, _heading(k)) for k in PROTOCOL_METRICS)
#: (key, heading) of the summary's columns: the protocol means and the means over detected faces only
SUMMARY_COLUMNS = tuple((k, _heading(k)) for k in ("fdfr", "ism", "ism_detected", "brisque", "serfiq",
                                                    "serfiq_detected", "serfiq_q", "qualityface", "face_brisque"))
GAIN_HEADING = METRICS["identity_gain"].heading  # "identity gain↓"
TOY_GAIN = "n/a (toy model)"
SUMMARY_NOTE = ("ISM and SER-FIQ as in the protocol (an image or identity without a detected face counts 0), and "
                "over the detected faces only. SER-FIQ: MTCNN alignment, SFace backbone, raw q and constants refitted "
                f"on clean faces ({NOT_COMPARABLE}); on the sample photos' faces its mean falls by "
                f"{SERFIQ_RESPONSE['jpeg5']:.3f} from clean to JPEG q5 and by {SERFIQ_RESPONSE['blur4']:.3f} to blur "
                "σ 4" + (", so it is used" if SERFIQ_RESPONSIVE else ": unresponsive on this backbone")
                + ". QualityFace and the face-box BRISQUE: diagnostics over the detected faces, not protocol metrics. "
                "[lo, hi]: bootstrap 95% interval over identities and images. Identity gain: the attacked model's "
                "denoising error on the identity's clean reference photos (set_C) with the class prompt minus that "
                "with the instance prompt (the same noise and timesteps for both prompts and every model), divided "
                "by that of the model attacked with the clean photos through the same transform; 1 = the attacker "
                "learnt the identity as well as from clean photos, lower = stronger protection (none is 1 by "
                "construction; compare with random-noise at the same budget). A toy model learns no identity: its "
                "gain is n/a.")
PAIRED_NOTE = ("Each method minus `none` at the same transform, with its bootstrap 95% interval: the same identities, "
               "prompts and generated images (common generation seeds) resampled together. An interval that excludes "
               "0 says the difference is larger than what identities and images vary by.")


#: decimals a summary column prints with (3 unless named): SER-FIQ's raw q moves in its fourth decimal
DIGITS = {"serfiq_q": 4}


def format_interval(interval: dict, key: str = "") -> str:
    """"0.412 [0.301, 0.522]" (decimals: :data:`DIGITS`); the value alone when the interval is undefined."""
    digits = DIGITS.get(key, 3)
    lo, hi = interval.get("lo"), interval.get("hi")
    text = format_value(interval.get("value"), digits)
    return text if lo is None or hi is None else f"{text} [{format_value(lo, digits)}, {format_value(hi, digits)}]"


def format_difference(interval: Optional[dict], key: str = "") -> str:
    """"+0.120 [+0.050, +0.190]" (decimals: :data:`DIGITS`); n/a without a difference."""
    digits = DIGITS.get(key, 3)
    if not interval or interval.get("value") is None:
        return "n/a"
    signed = lambda v: f"{round(v, digits) + 0.0:+.{digits}f}"  # + 0.0: no "-0.000" from rounding noise
    lo, hi = interval.get("lo"), interval.get("hi")
    return signed(interval["value"]) + ("" if lo is None or hi is None else f" [{signed(lo)}, {signed(hi)}]")


def _mean(values):
    vals = [v for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def aggregate(results: dict) -> list[dict]:
    """One row per (method, transform): metrics per prompt and their mean over identities and prompts, as the
    official scripts average (:func:`gapdiff_core.evaluation.combine_metrics`), each with its bootstrap 95% interval
    (``interval``, ``per_prompt_interval``: {key: {value, lo, hi}}) and, for methods, the paired difference against
    `none` at the same transform (``vs_none``, None for `none` itself or without a `none` row); the relative
    identity gain averaged over identities (None on a toy model); fidelity of the protected photos (and after the
    transform) vs the clean ones. Seeded by the run's seed."""
    groups: dict = {}
    for run in results["runs"]:
        groups.setdefault((run["method"], run["transform"]), []).append(run)
    prompts, seed = results["prompts"], (results.get("config") or {}).get("seed") or 0

    def by_identity(runs: list, ps: list) -> list:
        return [[r["metrics"][p] for p in ps] for r in sorted(runs, key=lambda r: r["identity"])]

    def as_dicts(stats: Optional[dict]) -> Optional[dict]:
        return None if stats is None else {k: v.to_dict() for k, v in stats.items()}

    none_runs = {t: runs for (m, t), runs in groups.items() if runs[0].get("method_kind") == "none"}
    rows = []
    for (method, transform), runs in groups.items():
        overall = as_dicts(metric_intervals(by_identity(runs, prompts), seed))
        per_prompt = {p: as_dicts(metric_intervals(by_identity(runs, [p]), seed)) for p in prompts}
        base = none_runs.get(transform)
        paired = (None if base is None or base is runs or sorted(r["identity"] for r in base) !=
                  sorted(r["identity"] for r in runs)
                  else as_dicts(paired_differences(by_identity(runs, prompts), by_identity(base, prompts), seed)))
        gains = [r.get("identity_gain") or {} for r in runs]
        rows.append({
            "method": method, "transform": transform, "budget": runs[0]["budget"],
            "method_spec": runs[0]["method_spec"], "identities": [r["identity"] for r in runs],
            "per_prompt": {p: {k: v["value"] for k, v in st.items()} for p, st in per_prompt.items()},
            "per_prompt_interval": per_prompt,
            "mean": {k: v["value"] for k, v in overall.items()}, "interval": overall, "vs_none": paired,
            "identity_gain": None if toy_model(results) else _mean(x.get("relative") for x in gains),
            "identity_gain_interval": None if toy_model(results) else gain_interval(runs, seed),
            "identity_gain_raw": _mean(x.get("gain") for x in gains),
            "psnr_db": _psnr(r["fidelity"] for r in runs),
            "ssim": _mean(r["fidelity"].get("ssim") for r in runs),
            "linf": max((r["fidelity"].get("linf_grey_levels") or 0.0) for r in runs),
            "psnr_after_transform_db": _psnr(r["fidelity_after_transform"] for r in runs),
        })
    return rows


def gain_interval(runs: list[dict], seed: int = 0) -> Optional[dict]:
    """The relative identity gain's mean over identities with its bootstrap 95% interval over identities and their
    reference photos (each photo's gain over its identity's clean-attack gain); None where a gain is undefined."""
    values = []
    for r in sorted(runs, key=lambda r: r["identity"]):
        g = r.get("identity_gain") or {}
        photos, clean = g.get("per_photo_gain"), g.get("clean_gain")
        if not photos or clean is None or clean <= 0:
            return None
        values.append([[p / clean for p in photos]])
    return HierarchicalBootstrap([[len(v[0])] for v in values], N_BOOT, seed).interval(values, "mean").to_dict()


def statistics_table(results: dict) -> list[dict]:
    """What results.json keeps of :func:`aggregate`: per method × transform, every metric with its 95% interval
    (overall and per prompt) and its paired difference against `none`."""
    keys = ("method", "transform", "budget", "interval", "per_prompt_interval", "vs_none", "identity_gain_interval")
    return [{k: r[k] for k in keys} for r in aggregate(results)]


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
    if toy_model(results):
        return TOY_GAIN
    return format_interval(row["identity_gain_interval"]) if row["identity_gain_interval"] else format_value(
        row["identity_gain"])


def no_face_note(rows: list[dict]) -> str:
    """Why ISM is undefined and SER-FIQ 0 when no generated image had a detectable face (else empty)."""
    if rows and all(v.get("fdfr") == 1.0 for r in rows for v in r["per_prompt"].values()):
        return ("No face was detected in any generated image (FDFR 1.000 everywhere), so ISM, SER-FIQ and the face "
                "quality count 0, as in the protocol, and their means over detected faces are undefined (n/a). "
                "Expected with the tiny random model: it cannot learn a face from a few photos in a few steps.")
    return ""

