"""Paired comparisons: two methods scored on the same items, and the same comparison over seeds.

A claim "method B beats method A" rests on two kinds of evidence, reported separately:

* within one seed, both methods answer the *same* questions (or continue the same prompts), so
  the difference is tested on the items' pairs: McNemar's exact test for right/wrong outcomes,
  and a paired bootstrap interval for any per-item statistic;
* across seeds (each seed: its own warm-up, data order and initialisation, shared by both
  methods), the per-seed differences get a Student-t interval of their mean, which also covers
  what floating-point differences between machines do to a run.

:func:`verdict` turns an interval into the words a report may use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from .statistics import mean_confidence_interval


@dataclass(frozen=True)
class PairedDifference:
    """``b - a`` on paired items, with its interval and (where defined) a p-value.

    Attributes:
        difference: the statistic of ``b`` minus that of ``a``.
        low, high: the interval of the difference at ``confidence``.
        p_value: two-sided p-value of "no difference" (``None`` where not computed).
        n: items (or seeds) the difference is taken over.
        confidence: the interval's level.
        method: how the interval was made (``"mcnemar+newcombe"``, ``"bootstrap"``, ``"t"``).
    """

    difference: float
    low: float
    high: float
    p_value: float | None
    n: int
    confidence: float
    method: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PairedDifference:
        """Read back :meth:`as_dict` (JSON writes NaN bounds as ``NaN``, read back as NaN)."""
        return cls(**{key: values[key] for key in cls.__dataclass_fields__})

    def format(self, digits: int = 3) -> str:
        """``+0.052 [+0.013, +0.091]`` (p = 0.012)."""
        text = f"{self.difference:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"
        if self.p_value is not None:
            text += f" (p = {self.p_value:.3g})"
        return text


MethodResults = dict[str, dict[str, Any]]
"""One seed's results (a dict each), by method name."""

PairDifferences = dict[tuple[str, str], dict[str, PairedDifference]]
"""For each compared pair of methods ``(a, b)``, each metric's difference ``b - a``."""


def _check_pairs(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("paired samples are empty")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def mcnemar(
    a_correct: Sequence[bool], b_correct: Sequence[bool], confidence: float = 0.95
) -> PairedDifference:
    """Accuracy of ``b`` minus accuracy of ``a`` on the same items.

    The p-value is McNemar's exact test (a binomial test on the discordant pairs: items that
    exactly one method gets right); the interval is Newcombe's hybrid score interval for a
    difference of paired proportions (method 10 of Newcombe, 1998), which stays inside
    [-1, 1] and does not collapse when the discordant counts are small.
    """
    _check_pairs(a_correct, b_correct)
    _check_confidence(confidence)
    n = len(a_correct)
    only_b = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if y and not x)
    only_a = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if x and not y)
    both = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if x and y)
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else stats.binomtest(only_b, discordant, 0.5).pvalue
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    difference = p_b - p_a
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    low_a, high_a = _wilson(both + only_a, n, z)
    low_b, high_b = _wilson(both + only_b, n, z)
    neither = n - both - discordant
    # correlation term of Newcombe's method 10 (phi of the 2x2 table, 0 when undefined)
    denominator = (both + only_a) * (neither + only_b) * (both + only_b) * (neither + only_a)
    phi = 0.0
    if denominator > 0:
        phi = (both * neither - only_a * only_b) / math.sqrt(denominator)
    d_low = math.sqrt(
        max(
            0.0, (p_b - low_b) ** 2 - 2 * phi * (p_b - low_b) * (high_a - p_a) + (high_a - p_a) ** 2
        )
    )
    d_high = math.sqrt(
        max(
            0.0, (high_b - p_b) ** 2 - 2 * phi * (high_b - p_b) * (p_a - low_a) + (p_a - low_a) ** 2
        )
    )
    return PairedDifference(
        difference, max(-1.0, difference - d_low), min(1.0, difference + d_high), float(p_value),
        n, confidence, "mcnemar+newcombe",
    )  # fmt: skip


def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    p = successes / n
    denominator = 1.0 + z * z / n
    center = (p + z * z / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def bootstrap_indices(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """``[resamples, n]`` item indices drawn with replacement: resample ``i`` is row ``i``.

    Scoring every method on the same rows keeps the pairing (an item that is hard for all
    methods does not widen the interval of their difference), and lets an expensive
    statistic be computed once per method and resample, then shared by every comparison.
    """
    if n < 1:
        raise ValueError("paired samples are empty")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_difference(
    observed: float,
    a_resampled: Sequence[float],
    b_resampled: Sequence[float],
    n: int,
    confidence: float = 0.95,
) -> PairedDifference:
    """The paired difference ``observed`` (statistic of ``b`` minus that of ``a`` on all
    items) with the percentile interval of ``b_resampled[i] - a_resampled[i]`` (both
    statistics computed on the same resample ``i`` of ``n`` items, see
    :func:`bootstrap_indices`); the p-value is the two-sided fraction of resampled
    differences on the other side of zero. A resample where either statistic is undefined
    (NaN) is left out; with none left, the interval is NaN and there is no p-value."""
    _check_pairs(a_resampled, b_resampled)
    _check_confidence(confidence)
    differences = np.asarray(b_resampled, dtype=float) - np.asarray(a_resampled, dtype=float)
    differences = differences[np.isfinite(differences)]
    if differences.size == 0:
        return PairedDifference(
            float(observed), math.nan, math.nan, None, n, confidence, "bootstrap"
        )
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(differences, [tail, 1.0 - tail])
    below, above = float(np.mean(differences <= 0)), float(np.mean(differences >= 0))
    p_value = min(1.0, 2.0 * min(below, above))
    return PairedDifference(
        float(observed), float(low), float(high), p_value, n, confidence, "bootstrap"
    )


def paired_bootstrap(
    a: Sequence[Any],
    b: Sequence[Any],
    statistic: Callable[[Sequence[Any]], float] | None = None,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """``statistic(b) - statistic(a)`` with a percentile bootstrap interval over items.

    Each resample draws the same item indices for both methods (the pairing is kept), so an
    item that is hard for both does not widen the interval. ``statistic`` maps a list of
    per-item values (or items) to a number; the default is the mean. The p-value is the
    two-sided bootstrap fraction of resampled differences on the other side of zero.
    """
    _check_pairs(a, b)
    _check_confidence(confidence)
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100, got {resamples}")
    measure = statistic or (lambda values: float(np.mean(values)))
    a_items, b_items = list(a), list(b)
    n = len(a_items)
    observed = measure(b_items) - measure(a_items)
    a_resampled, b_resampled = [], []
    for picked in bootstrap_indices(n, resamples, seed):
        a_resampled.append(measure([a_items[i] for i in picked]))
        b_resampled.append(measure([b_items[i] for i in picked]))
    return bootstrap_difference(observed, a_resampled, b_resampled, n, confidence)


def seed_difference(differences: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """Mean over seeds of per-seed paired differences, with a Student-t interval and the
    one-sample t-test p-value (NaN interval and no p-value for a single seed)."""
    values = [float(v) for v in differences]
    if not values:
        raise ValueError("seed_difference needs at least one seed")
    mean, low, high = mean_confidence_interval(values, confidence)
    p_value = None
    if len(values) > 1:
        spread = float(np.std(values, ddof=1))
        if spread == 0.0:
            p_value = 1.0 if mean == 0.0 else 0.0
        else:
            p_value = float(stats.ttest_1samp(values, 0.0).pvalue)
    return PairedDifference(mean, low, high, p_value, len(values), confidence, "t")


MIN_SEEDS_FOR_A_CLAIM = 3
"""Fewest seeds an over-seed (Student-t) interval needs before it is read as a difference: with
two, one degree of freedom, and two per-seed differences that happen to be equal (200 items
give steps of 0.005) collapse the interval to a point."""


def verdict(result: PairedDifference, higher_is_better: bool = True) -> str:
    """What an interval supports, in words: ``better``, ``worse`` or ``no significant
    difference`` (also for a single seed, whose interval is undefined, for fewer than
    :data:`MIN_SEEDS_FOR_A_CLAIM` seeds, and for per-seed differences with no spread)."""
    if math.isnan(result.low) or math.isnan(result.high):
        return "no significant difference (one seed: no interval)"
    if result.method == "t" and result.n < MIN_SEEDS_FOR_A_CLAIM:
        return (f"no significant difference ({result.n} seeds: a claim over seeds needs at "
                f"least {MIN_SEEDS_FOR_A_CLAIM})")  # fmt: skip
    if result.method == "t" and result.low == result.high:
        return "no significant difference (identical per-seed differences: no spread to judge)"
    if result.low > 0:
        return "better" if higher_is_better else "worse"
    if result.high < 0:
        return "worse" if higher_is_better else "better"
    return "no significant difference"
