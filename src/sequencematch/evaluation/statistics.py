"""Intervals for the numbers a comparison reports.

Accuracy over questions gets a Wilson score interval; a metric over seeds gets the Student-t
interval of its mean (quantiles from :mod:`scipy.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (``n == 0`` gives ``(0.0, 1.0)``).

    Used for accuracy over questions: unlike the normal (Wald) interval it stays inside
    [0, 1] and is not degenerate at 0 or n successes.
    """
    _check_confidence(confidence)
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    denominator = 1.0 + z * z / n
    center = (p + z * z / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def student_t_quantile(q: float, df: float) -> float:
    """Quantile of Student's t distribution with ``df`` degrees of freedom."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}")
    return float(stats.t.ppf(q, df))


def mean_confidence_interval(
    values: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student t interval of the mean, e.g. of a metric over seeds.

    Uses the sample standard deviation (``n - 1``). With a single value the interval is
    undefined and ``low``/``high`` are NaN.
    """
    _check_confidence(confidence)
    data = [float(v) for v in values]
    if not data:
        raise ValueError("mean_confidence_interval needs at least one value")
    n = len(data)
    mean = math.fsum(data) / n
    if n == 1:
        return mean, math.nan, math.nan
    variance = math.fsum((v - mean) ** 2 for v in data) / (n - 1)
    half = student_t_quantile(0.5 + confidence / 2.0, n - 1) * math.sqrt(variance / n)
    return mean, mean - half, mean + half
