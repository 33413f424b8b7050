"""Bootstrap confidence intervals over identities and images (a two-level, or cluster, bootstrap).

The data of one comparison are entries: one per identity and stratum (a prompt), each holding one value per image
(NaN where the value is undefined, e.g. no face). A resample draws the identities with replacement, then, within
each drawn identity, every entry's images with replacement (Davison & Hinkley 1997, §3.8: resampling at both
levels). The statistic is recomputed from the resampled entries' sums; the interval is the percentile interval of
the resampled statistics. A paired difference applies the very same draws to two sets of values whose identities,
strata and images correspond (same generation seeds), so what they share cancels. Seeded: the same data and seed
give the same interval.

Rules (how entries combine into one statistic):

- ``mean``: each entry's mean over its images, NaN counting as 0; the mean over entries;
- ``detected_or_zero``: each entry's mean over its defined values, 0 for an entry with none; the mean over entries;
- ``pooled``: the mean of all defined values of all entries (undefined without any).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

RULES = ("mean", "detected_or_zero", "pooled")


def combine(S: np.ndarray, N: np.ndarray, n: np.ndarray, rule: str) -> np.ndarray:
    """The statistic from entry sums over their last axis: ``S`` the sum of defined values, ``N`` their count,
    ``n`` the number of images (entries with n = 0 do not exist). NaN where undefined."""
    exists = n > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        if rule == "pooled":
            return np.where(N.sum(-1) > 0, S.sum(-1) / N.sum(-1), np.nan)
        if rule == "mean":
            per_entry = S / np.where(exists, n, 1)
        elif rule == "detected_or_zero":
            per_entry = np.where(N > 0, S / np.where(N > 0, N, 1), 0.0)
        else:
            raise ValueError(f"unknown rule {rule!r}; one of {', '.join(RULES)}")
        k = exists.sum(-1)
        return np.where(k > 0, np.where(exists, per_entry, 0.0).sum(-1) / np.maximum(k, 1), np.nan)


@dataclass(frozen=True)
class Interval:
    """A statistic and its bootstrap percentile interval (``lo``/``hi`` None when no resample defines it)."""

    value: Optional[float]
    lo: Optional[float]
    hi: Optional[float]

    def to_dict(self) -> dict:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}


def _float(x) -> Optional[float]:
    return float(x) if np.isfinite(x) else None


def _entries(values) -> list[list[np.ndarray]]:
    """values[identity][stratum] (sequences, None = undefined) as float arrays, NaN where undefined."""
    return [[np.asarray([np.nan if x is None else x for x in v], np.float64).reshape(-1) for v in row]
            for row in values]


def point_estimate(values, rule: str) -> Optional[float]:
    """The statistic of per-image ``values[identity][stratum]`` under ``rule`` (None where undefined)."""
    entries = [v for row in _entries(values) for v in row]
    S = np.array([np.nansum(v) for v in entries])
    N = np.array([np.isfinite(v).sum() for v in entries])
    return _float(combine(S, N, np.array([v.size for v in entries]), rule))


class HierarchicalBootstrap:
    """One resampling plan for entries of ``sizes`` (identities × strata: images per entry, 0 = no entry):
    ``n_boot`` draws of the identities, and of each entry's images, from ``seed``."""

    def __init__(self, sizes, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
        self.sizes = np.asarray(sizes, np.int64)
        if self.sizes.ndim != 2 or not self.sizes.size:
            raise ValueError(f"bootstrap: sizes must be identities × strata, got shape {self.sizes.shape}")
        if n_boot < 100 or not 0 < level < 1:
            raise ValueError(f"bootstrap: need n_boot >= 100 and 0 < level < 1, got {n_boot}, {level}")
        self.n_boot, self.level = n_boot, level
        rng = np.random.default_rng(seed)
        n_ident = self.sizes.shape[0]
        self.identities = rng.integers(0, n_ident, (n_boot, n_ident))
        self.images = [[rng.integers(0, m, (n_boot, m)) if m else None for m in row] for row in self.sizes]

    def resampled(self, values, rule: str) -> np.ndarray:
        """The statistic of each of the n_boot resamples of per-image ``values[identity][stratum]``."""
        S = np.zeros((self.n_boot,) + self.sizes.shape)
        N = np.zeros_like(S)
        for i, row in enumerate(_entries(values)):
            for p, v in enumerate(row):
                if v.size != self.sizes[i, p]:
                    raise ValueError(f"bootstrap: entry ({i}, {p}) has {v.size} values, the plan {self.sizes[i, p]}")
                if v.size:
                    x = v[self.images[i][p]]
                    S[:, i, p], N[:, i, p] = np.nansum(x, 1), np.isfinite(x).sum(1)
        pick = np.broadcast_to(self.identities[:, :, None], S.shape)
        flat = lambda a: a.reshape(self.n_boot, -1)
        return combine(flat(np.take_along_axis(S, pick, 1)), flat(np.take_along_axis(N, pick, 1)),
                       flat(self.sizes[self.identities]), rule)

    def statistic(self, values, rule: str) -> tuple[Optional[float], np.ndarray]:
        """(the statistic of the data, its n_boot resampled values)."""
        return point_estimate(values, rule), self.resampled(values, rule)

    def _interval(self, point: Optional[float], draws: np.ndarray) -> Interval:
        draws = draws[np.isfinite(draws)]
        if point is None or not draws.size:
            return Interval(point, None, None)
        tail = (1 - self.level) / 2 * 100
        lo, hi = np.percentile(draws, [tail, 100 - tail])
        return Interval(point, float(lo), float(hi))

    def interval(self, values, rule: str) -> Interval:
        """The statistic and its percentile interval."""
        return self._interval(*self.statistic(values, rule))

    def paired_difference(self, values, baseline, rule: str) -> Interval:
        """statistic(values) - statistic(baseline), both resampled with the same draws, and its interval."""
        a, da = self.statistic(values, rule)
        b, db = self.statistic(baseline, rule)
        return self._interval(None if a is None or b is None else a - b, da - db)
