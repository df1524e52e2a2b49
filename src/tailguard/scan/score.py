"""One score per model from the per-class figures, with no clean reference model.

A clean classifier is fooled by an optimised trigger too: each class has some
patch, blend or perturbation that sends part of the other classes' inputs to it.
What a planted trigger adds is one class that is far easier to reach than the
others *in the same family*. So every figure is compared with the other classes
of the same model and family: the robust z-score of class k's log10 odds of
catastrophe against the median and the MAD (scaled by 1.4826 to estimate a
standard deviation of normal data) of the other classes, the statistic Neural
Cleanse uses for its anomaly index (Wang et al. 2019). The MAD has a floor, so
that a family in which the other classes happen to agree closely does not turn
a small difference into a large score. The model's score is the largest z over
classes and families: a planted trigger need only show in one family.

Log odds rather than log probability: the planted class often reaches p = 0.99
or more where a clean class reaches 0.9; in log p the two differ by 0.04 decade,
in log odds by 1. The odds are bounded by the resolution of the estimate (half a
hit in its model calls), so a p of exactly 0 or 1 stays finite.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from ..result import Estimate

#: 1.4826 x MAD estimates the standard deviation of normally distributed figures
MAD_TO_STD = 1.4826


def log10_odds(est: Estimate) -> float:
    """log10 (p / (1 - p)) of an estimate, p clipped to [1 / (2n), 1 - 1 / (2n)] for n model calls."""
    floor = 1.0 / (2.0 * max(est.n_model_calls, 1))
    p = 0.0 if math.isinf(est.log10_p) else min(est.p, 1.0)
    p = min(max(p, floor), 1.0 - floor)
    return math.log10(p) - math.log10(1.0 - p)


def robust_z(values: Sequence[float], min_scale: float) -> list[float]:
    """For each value, (value - median of the others) / max(1.4826 MAD of the others, min_scale)."""
    if len(values) < 3:
        raise ValueError("a robust z-score needs at least 3 values")
    out = []
    for k, v in enumerate(values):
        others = [u for j, u in enumerate(values) if j != k]
        centre = statistics.median(others)
        mad = statistics.median(abs(u - centre) for u in others)
        out.append((v - centre) / max(MAD_TO_STD * mad, min_scale))
    return out
