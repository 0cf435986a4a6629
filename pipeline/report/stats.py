"""The report's statistics as plain functions of numbers: intervals over seeds and episodes, and the paper's ratio.

Across seeds the unit is the seed: each seed's rate is taken over its own episodes first, and the interval
is Student's t over those per-seed rates. A handful of seeds is the usual case, where the normal 1.96
would claim too much certainty, so the t quantile is computed exactly (scipy is not a dependency): from
the regularized incomplete beta function, inverted by bisection. With one seed there is no spread to
measure, so there is no interval (NaN), never a zero-width one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

LEVEL = 0.95
CI_KIND = "95% CI, t over seeds"
DIFFERENCE_KIND = "95% CI, Welch t over seeds"


@dataclass(frozen=True)
class Estimate:
    """A mean (or a difference of means) with the half-width of its 95% interval; NaN half-width = no interval."""

    mean: float
    half: float
    df: float

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.half)


def mean_interval(values: Sequence[float]) -> Estimate:
    """The mean of per-seed values and its t-interval, mean ± t(0.975, n−1)·sd/√n; no interval for n < 2."""
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan)
    mean = math.fsum(values) / n
    if n < 2:
        return Estimate(mean, math.nan, math.nan)
    return Estimate(mean, _half_width(_variance(values, mean) / n, n - 1), n - 1)


def difference_interval(values: Sequence[float], baseline: Sequence[float]) -> Estimate:
    """mean(values) − mean(baseline) with Welch's t-interval (unequal variances, Welch–Satterthwaite df).

    Each side needs two seeds for its variance; with fewer the difference has no interval.
    """
    a, b = mean_interval(values), mean_interval(baseline)
    difference = a.mean - b.mean
    if not (a.has_interval and b.has_interval):
        return Estimate(difference, math.nan, math.nan)
    # each side's variance of its mean, and its seeds
    sides = [(_variance(side, mean) / len(side), len(side)) for side, mean in ((values, a.mean), (baseline, b.mean))]
    spread = math.fsum(share for share, _ in sides)
    if spread == 0:  # every seed of both sides agrees: the interval is the point itself
        return Estimate(difference, 0.0, len(values) + len(baseline) - 2)
    df = spread**2 / math.fsum(share**2 / (n - 1) for share, n in sides)
    return Estimate(difference, _half_width(spread, df), df)


def relative_improvement(value: float, baseline: float) -> float:
    """(value − baseline) / baseline, as papers report "+13.3% relative"; NaN (undefined) when the baseline is 0."""
    return (value - baseline) / baseline if baseline else float("nan")


def wilson_interval(successes: np.ndarray, episodes: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """The 95% Wilson score interval of success rates over episodes (low, high), for one run's rates.

    Unlike ±1.96·SE it stays inside [0, 1] and does not shrink to nothing at 0% or 100%, which matters
    with the few dozen episodes an eval split often has.
    """
    n = np.asarray(episodes, dtype=float)
    p = np.asarray(successes, dtype=float)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` (> 0, not necessarily whole) degrees of freedom.

    For t ≥ 0, P(T > t) = I_x(df/2, 1/2) / 2 with x = df / (df + t²); x is found by bisection (the tail
    grows with x), which ends when x stops moving in floating point.
    """
    if not 0 < p < 1 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, not p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    tail = 2 * (1 - p)  # I_x(df/2, 1/2) at the wanted x
    low, high = 0.0, 1.0
    while True:
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if _incomplete_beta(df / 2, 0.5, middle) < tail:
            low = middle
        else:
            high = middle
    return math.sqrt(df * (1 - middle) / middle)


def _half_width(variance_of_mean: float, df: float) -> float:
    return t_quantile(0.5 + LEVEL / 2, df) * math.sqrt(variance_of_mean)


def _variance(values: Sequence[float], mean: float) -> float:
    """The sample variance (n − 1 in the denominator)."""
    return math.fsum((value - mean) ** 2 for value in values) / (len(values) - 1)


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (Numerical Recipes §6.4)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):  # where the fraction converges fast; otherwise use I_x(a, b) = 1 − I_(1−x)(b, a)
        return front * _beta_fraction(a, b, x) / a
    return 1 - front * _beta_fraction(b, a, 1 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), evaluated by Lentz's method."""
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    value = d
    for m in range(1, 10_000):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        for numerator in (even, odd):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            value *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return value
