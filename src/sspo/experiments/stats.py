"""Statistics shared by the experiments: Student-t confidence intervals, paired differences and a
paired bootstrap. Plain Python (and NumPy for the bootstrap): every number can be checked by hand.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

__all__ = ["finite", "mean_ci", "paired_bootstrap_ci", "paired_diff", "t_quantile"]


# ----------------------------------------------------------------------------- Student t
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Quantile ``t_{p, df}`` of Student's t (bisection on the exact CDF; e.g. ``t_{0.975, 2} = 4.3027``)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def finite(values: Iterable) -> list[float]:
    """The finite numbers among ``values`` (``None``, NaN, ±inf and booleans dropped)."""
    return [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]


def mean_ci(values: Iterable, level: float = 0.95) -> tuple[float, float, int]:
    """``(mean, half_width, n)`` of the t-based confidence interval ``mean ± t_{(1+level)/2, n−1}·s/√n``.

    ``s`` is the sample standard deviation (``n − 1`` denominator). Non-finite values and ``None`` are
    dropped; with ``n = 1`` the half-width is NaN (no interval from one seed), with ``n = 0`` both are NaN.
    """
    xs = finite(values)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = statistics.fmean(xs)
    if n == 1:
        return mean, math.nan, 1
    s = statistics.stdev(xs)
    return mean, t_quantile(0.5 + level / 2.0, n - 1) * s / math.sqrt(n), n




def paired_diff(a: Sequence, b: Sequence, level: float = 0.95) -> dict[str, float]:
    """The paired difference ``d_k = a_k − b_k`` (seed ``k`` of two methods) over the pairs where both
    are finite: ``mean``, ``half`` (the Student-t ``level`` CI half-width ``t·s_d/√n``), ``lo``, ``hi``
    and ``n``. Pairing removes what the two share (warm start, evaluation problems, first rollout)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} != {len(b)}")
    diffs = [x - y for x, y in zip(a, b) if finite([x]) and finite([y])]
    mean, half, n = mean_ci(diffs, level)
    return {"mean": mean, "half": half, "lo": mean - half, "hi": mean + half, "n": n}


def paired_bootstrap_ci(a: Sequence, b: Sequence, level: float = 0.95, *, resamples: int = 10_000,
                        seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """Percentile bootstrap CI of the mean paired difference: pairs resampled with replacement
    (``resamples`` times, a seeded generator); NaN bounds with fewer than two pairs."""
    import numpy as np

    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} != {len(b)}")
    diffs = np.array([x - y for x, y in zip(a, b) if finite([x]) and finite([y])], dtype=float)
    if len(diffs) < 2:
        return math.nan, math.nan
    picks = np.random.default_rng(seed).integers(0, len(diffs), size=(resamples, len(diffs)))
    means = diffs[picks].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))
