"""Two independent runs of one estimator, combined, with a check that they agree.

Importance sampling can be wrong with a tight CI: when the proposal misses part of the
failure region, the weights it did draw look well-behaved and their variance says
nothing of the mass it never saw (a noisy empirical D whose failures are spread over
many data points is the typical case). Two independent runs miss different parts, so
their disagreement is a symptom that a single run cannot show. When they agree, their
average is a better estimate than either; when they do not, the CI is widened to span
both runs and reach up to an independent upper bound on p (plain sampling's exact one),
and the result says so.
"""

from __future__ import annotations

import math

from scipy import stats

from .._logspace import normal_log_ci, to_log10
from .base import Outcome

#: two runs "disagree" when their log estimates differ by more than this many standard
#: deviations of the difference: strict, so that two correct runs almost never trip it
DISAGREEMENT_Z = 3.3


def log_scale_sd(outcome: Outcome, confidence: float) -> float:
    """The standard deviation of log p_hat implied by an outcome's (lower) CI half-width."""
    z = stats.norm.ppf(0.5 + confidence / 2)
    return (outcome.log_p - outcome.ci[0]) / z


def agree(a: Outcome, b: Outcome, confidence: float) -> bool:
    """Whether two independent estimates differ by no more than their CIs allow."""
    if not (math.isfinite(a.log_p) and math.isfinite(b.log_p)):
        return math.isinf(a.log_p) and math.isinf(b.log_p)
    spread = math.hypot(log_scale_sd(a, confidence), log_scale_sd(b, confidence))
    return abs(a.log_p - b.log_p) <= DISAGREEMENT_Z * spread


def combine(a: Outcome, b: Outcome, upper_bound: float, confidence: float) -> Outcome:
    """The average of two independent runs (natural logs), with a CI that stays honest.

    ``upper_bound``: an independent upper CI end for p (natural log), used when the runs
    disagree. Both runs' diagnostics are kept under "replicates".
    """
    diagnostics = {
        "replicates": [a.diagnostics, b.diagnostics],
        "replicate_log10_p": [to_log10(a.log_p), to_log10(b.log_p)],
    }
    warnings = tuple(dict.fromkeys(a.warnings + b.warnings))
    heuristic = a.heuristic or b.heuristic
    log_mean = _log_average(a.log_p, b.log_p)
    if agree(a, b, confidence):
        diagnostics["replicates_agree"] = True
        if math.isinf(log_mean):
            return Outcome(log_mean, (-math.inf, max(a.ci[1], b.ci[1])), diagnostics, warnings, heuristic)
        p_a, p_b = math.exp(a.log_p - log_mean), math.exp(b.log_p - log_mean)
        rel_var = (p_a**2 * _rel_var(a, confidence) + p_b**2 * _rel_var(b, confidence)) / 4.0
        ci = normal_log_ci(log_mean, math.sqrt(rel_var), confidence)
        return Outcome(log_mean, ci, diagnostics, warnings, heuristic)
    diagnostics["replicates_agree"] = False
    low = min(a.ci[0], b.ci[0])
    high = max(a.ci[1], b.ci[1], upper_bound)
    message = (
        f"two independent runs disagree (log10 p = {to_log10(a.log_p):.2f} and "
        f"{to_log10(b.log_p):.2f}): at this budget the method misses part of the failure "
        "region, so the CI is widened to span both and reach plain sampling's upper bound"
    )
    return Outcome(log_mean, (low, high), diagnostics, (*warnings, message), heuristic)


def _log_average(x: float, y: float) -> float:
    """log((e^x + e^y) / 2), -inf safe."""
    top = max(x, y)
    if math.isinf(top):
        return top
    return top + math.log((math.exp(x - top) + math.exp(y - top)) / 2.0)


def _rel_var(outcome: Outcome, confidence: float) -> float:
    """Relative variance of p_hat implied by the CI (inverts normal_log_ci)."""
    return math.expm1(log_scale_sd(outcome, confidence) ** 2)
