"""The bootstrap over identities and images (metrics/statistics.py) on data whose answer is known, and the
protocol's statistics built on it (evaluation/summary.py)."""
from __future__ import annotations

import numpy as np
import pytest

from gapdiff_core.evaluation.summary import combine_metrics, metric_intervals, paired_differences
from gapdiff_core.metrics.statistics import HierarchicalBootstrap, combine, point_estimate


def test_image_level_interval_of_a_mean_has_the_normal_theory_width():
    """One identity, 400 standard-normal values: the 95% interval of the mean is mean ± 1.96 s/√n."""
    x = np.random.default_rng(3).normal(0.0, 1.0, 400)
    r = HierarchicalBootstrap([[400]], n_boot=4000, seed=0).interval([[x]], "mean")
    half = 1.96 * x.std(ddof=1) / 20
    assert r.value == pytest.approx(x.mean())
    assert r.lo == pytest.approx(x.mean() - half, abs=0.15 * half) and r.hi == pytest.approx(x.mean() + half,
                                                                                             abs=0.15 * half)


def test_identity_level_resampling_gives_the_exact_percentiles():
    """Two identities with constant values 0 and 1: a resample's mean is 0, ½ or 1 with probability ¼, ½, ¼, so
    the 95% percentile interval is [0, 1]; an image-only bootstrap would give [½, ½]."""
    r = HierarchicalBootstrap([[3], [3]], n_boot=2000, seed=0).interval([[[0, 0, 0]], [[1, 1, 1]]], "mean")
    assert (r.value, r.lo, r.hi) == (0.5, 0.0, 1.0)
    draws = HierarchicalBootstrap([[3], [3]], n_boot=4000, seed=1).resampled([[[0, 0, 0]], [[1, 1, 1]]], "mean")
    assert set(np.unique(draws)) == {0.0, 0.5, 1.0} and np.mean(draws == 0.5) == pytest.approx(0.5, abs=0.03)


def test_paired_difference_cancels_what_the_two_share():
    """method = none + 0.3 image by image: the paired interval is exactly [0.3, 0.3], while each alone is wide."""
    rng = np.random.default_rng(0)
    none = [[rng.normal(0, 1, 6), rng.normal(0, 1, 6)] for _ in range(5)]
    method = [[v + 0.3 for v in row] for row in none]
    plan = HierarchicalBootstrap([[6, 6]] * 5, seed=0)
    d = plan.paired_difference(method, none, "mean")
    assert d.value == pytest.approx(0.3) and d.lo == pytest.approx(0.3) and d.hi == pytest.approx(0.3)
    alone = plan.interval(method, "mean")
    assert alone.hi - alone.lo > 0.3


def test_bootstrap_is_seeded_and_deterministic():
    x = [[np.arange(10.0)], [np.arange(10.0) * 2]]
    a, b = (HierarchicalBootstrap([[10], [10]], seed=7).interval(x, "mean") for _ in range(2))
    assert a == b
    assert HierarchicalBootstrap([[10], [10]], seed=8).interval(x, "mean") != a


def test_rules_follow_the_official_averaging():
    # entry (identity 0): faces 0.2, 0.4 and one undetected; entry (identity 1): no face at all
    values = [[[0.2, None, 0.4]], [[None, None]]]
    assert point_estimate(values, "pooled") == pytest.approx(0.3)
    assert point_estimate(values, "detected_or_zero") == pytest.approx((0.3 + 0.0) / 2)  # ISM: counts 0
    assert point_estimate(values, "mean") == pytest.approx((0.6 / 3 + 0.0) / 2)  # SER-FIQ: no face scores 0
    assert point_estimate([[[None]]], "pooled") is None
    with pytest.raises(ValueError, match="unknown rule"):
        combine(np.ones(1), np.ones(1), np.ones(1), "median")
    with pytest.raises(ValueError, match="identities × strata"):
        HierarchicalBootstrap([3, 3])
    with pytest.raises(ValueError, match="has 2 values, the plan 3"):
        HierarchicalBootstrap([[3]]).interval([[[1, 2]]], "mean")


def _entry(fdfr, ism, serfiq, brisque=30.0):
    return {"per_image": {"fdfr": fdfr, "ism": ism, "brisque": [brisque] * len(fdfr),
                          "serfiq": serfiq, "serfiq_q": [None if s is None else 0.9 for s in serfiq],
                          "qualityface": [None if f else 0.8 for f in fdfr],
                          "face_brisque": [None if f else 40.0 for f in fdfr]},
            "has_reference": ism is not None, "n_images": len(fdfr), "n_faces": len(fdfr) - int(sum(fdfr))}


def test_protocol_statistics_and_their_intervals():
    a = _entry([0, 0, 1, 0], [0.5, 0.7, None, 0.6], [0.8, 0.6, None, 0.7])
    b = _entry([1, 1, 1, 1], [None] * 4, [None] * 4)
    m = combine_metrics([a, b])
    assert m["fdfr"] == pytest.approx((0.25 + 1.0) / 2) and m["ism"] == pytest.approx((0.6 + 0) / 2)
    assert m["ism_detected"] == pytest.approx(0.6) and m["serfiq"] == pytest.approx((2.1 / 4 + 0) / 2)
    assert m["serfiq_detected"] == pytest.approx(0.7) and m["qualityface"] == pytest.approx(0.8)
    assert m["brisque"] == 30.0 and m["face_brisque"] == 40.0 and m["serfiq_q"] == pytest.approx(0.9)
    assert combine_metrics([_entry([0], None, [0.5])])["ism"] is None  # no reference: no ISM
    ci = metric_intervals([[a], [b]])
    for key, v in ci.items():
        assert v.value == pytest.approx(m[key]), key
        assert v.lo is None or v.lo <= v.value <= v.hi, key
    assert (ci["brisque"].lo, ci["brisque"].hi) == (30.0, 30.0) and ci["fdfr"].hi == 1.0 and ci["fdfr"].lo <= 0.25


def test_paired_differences_need_matching_images():
    a = [[_entry([0, 0], [0.5, 0.7], [0.8, 0.6])]]
    base = [[_entry([0, 1], [0.9, None], [0.9, None])]]
    d = paired_differences(a, base)
    assert d["fdfr"].value == pytest.approx(-0.5) and d["ism"].value == pytest.approx(0.6 - 0.9)
    assert paired_differences(a, [[_entry([0], [0.9], [0.9])]]) is None
