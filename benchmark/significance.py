"""How sure a number is: the mean of a metric over seeds with its 95% interval, and whether two rows differ.

Each seed's FID carries a bootstrap sd over its generated samples. Over seeds, a group's variance is
the larger of the seeds' sample variance and their mean bootstrap variance: with three seeds the
sample variance alone can come out near zero by chance, and no seed can be more precise than its own
samples allow. Two rows are compared with Welch's t-test on those variances (a row of one seed
counts its variance as known, which makes the test a z-test when both rows have one seed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats

LEVEL = 0.95
ALPHA = 1.0 - LEVEL
Z95 = stats.norm.ppf(1.0 - ALPHA / 2)


@dataclass(frozen=True)
class Summary:
    """A metric over ``n`` seeds: ``mean``, the seeds' ``std`` (NaN for one seed) and a 95% interval of the mean."""

    mean: float
    std: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class Comparison:
    """``difference`` = row minus reference (negative is lower); ``verdict`` is lower, higher or tie at ``ALPHA``."""

    difference: float
    p_value: float
    verdict: str


def _variance(values: Sequence[float], sds: Sequence[float]) -> float:
    """Per-seed variance: the seeds' sample variance, floored at their mean bootstrap variance."""
    known = [sd * sd for sd in sds if sd is not None and math.isfinite(sd)]
    floor = sum(known) / len(known) if known else 0.0
    if len(values) < 2:
        return floor
    mean = sum(values) / len(values)
    sample = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return max(sample, floor)


def summarize(values: Sequence[float], sds: Sequence[float]) -> Summary:
    """Mean over seeds and its 95% interval (Student's t over seeds; the bootstrap's normal one for one seed)."""
    n = len(values)
    if n == 0:
        raise ValueError("nothing to summarize")
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    quantile = stats.t.ppf(1.0 - ALPHA / 2, n - 1) if n > 1 else Z95
    half = quantile * math.sqrt(_variance(values, sds) / n)
    return Summary(mean, std, mean - half, mean + half, n)


def compare(
    values: Sequence[float], sds: Sequence[float], reference: Sequence[float], reference_sds: Sequence[float]
) -> Comparison:
    """Welch's t-test of a row's seeds against the reference row's seeds, on the floored variances."""
    if not values or not reference:
        raise ValueError("both rows need at least one seed")
    difference = sum(values) / len(values) - sum(reference) / len(reference)
    parts = [(_variance(v, s) / len(v), len(v)) for v, s in ((values, sds), (reference, reference_sds))]
    se2 = sum(part for part, _ in parts)
    if se2 <= 0.0:
        p_value = 1.0 if difference == 0 else 0.0
    else:
        denominator = sum(part * part / (n - 1) for part, n in parts if n > 1)
        df = se2 * se2 / denominator if denominator > 0 else math.inf
        p_value = float(2.0 * stats.t.sf(abs(difference) / math.sqrt(se2), df))
    if p_value >= ALPHA:
        verdict = "tie"
    else:
        verdict = "lower" if difference < 0 else "higher"
    return Comparison(difference, p_value, verdict)
