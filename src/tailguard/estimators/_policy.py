"""How ``auto`` turns several independent results into one honest interval.

The inputs are a plain-sampling pilot (an exact Clopper-Pearson interval, no
assumption) and two rare-event methods that fail in different ways: importance
sampling misses failure regions its proposal never reaches, with weights that still
look healthy; splitting loses regions its MCMC moves cannot cross into, or follows
the wrong region up a score of a misleading scale. Neither can see its own blind
spot, but each usually sees the other's. The rules (docs/design/006-interval-policy.md):

1. A method whose own checks failed (heavy-tailed weights, a level never reached, a
   heuristic bound) is not *usable*: its interval is not used, only its estimate, as
   evidence that there is at least that much probability.
2. Two usable methods that agree (their log estimates differ by less than
   DISAGREEMENT_Z standard deviations of the difference) are combined by inverse
   variance in log space, each side of the interval on its own: the interval is
   narrower than either alone.
3. Usable methods that disagree give an interval spanning all estimates, centred on
   the largest usable one (missing mass is the common failure), marked not trusted,
   and said so. An unusable method whose estimate lies above the usable interval
   widens it up to that estimate, centre unchanged (degenerate weights overestimate
   as well as under), also not trusted.
   Inside a usable interval, an unusable method's estimate whose own lower half-width
   is narrower becomes the point estimate (the interval stays).
4. The pilot's exact interval is never dropped: a result that contradicts it is
   widened to include it and marked not trusted; a result consistent with it keeps
   the pilot's upper end as a cap.
5. With no usable method and no finite estimate, the result is the pilot's
   proven upper bound, and says from how many draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from scipy import stats

from .._logspace import to_log10
from .base import Outcome

#: two results "disagree" beyond this many standard deviations of their difference
DISAGREEMENT_Z = 3.3


@dataclass(frozen=True)
class Candidate:
    """One method's outcome under the name it is reported by."""

    name: str
    outcome: Outcome

    @property
    def usable(self) -> bool:
        o = self.outcome
        return (o.trusted and not o.heuristic and math.isfinite(o.log_p) and math.isfinite(o.ci[0])
                and o.ci[0] < o.log_p)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.outcome.log_p)


def log_sd(outcome: Outcome, confidence: float) -> float:
    """Standard deviation of ln p_hat implied by the wider half of an outcome's CI."""
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    low, high = outcome.ci
    half = max(outcome.log_p - low, high - outcome.log_p)
    return half / z


def combine(candidates: Sequence[Candidate], pilot: Outcome, pilot_draws: int,
            confidence: float) -> Outcome:
    """One outcome from the rare-event candidates and the pilot, by the rules above."""
    usable = [c for c in candidates if c.usable]
    finite = [c for c in candidates if c.finite]
    diagnostics = {
        "methods": {c.name: _summary(c.outcome) for c in candidates},
        "pilot": {"log10_p": to_log10(pilot.log_p), "ci_log10": [to_log10(v) for v in pilot.ci],
                  "draws": pilot_draws},
    }
    warnings = tuple(dict.fromkeys(w for c in candidates for w in _tagged(c)))
    if not finite:
        return _pilot_bound(pilot, pilot_draws, diagnostics, warnings)
    if not usable:
        result = _span(finite, pilot, confidence,
                       "no method could vouch for its interval, so it spans their estimates up to "
                       "plain sampling's upper bound", max(c.outcome.log_p for c in finite), up_to_pilot=True)
    elif len(usable) > 1 and not _all_agree(usable, confidence):
        result = _span(finite, pilot, confidence, _disagreement(usable),
                       max(c.outcome.log_p for c in usable))
    else:
        result = _sharper_point(_inverse_variance(usable, confidence), finite, confidence)
        above = [c for c in finite if not c.usable and c.outcome.log_p > result.ci[1]]
        if above:
            result = _span([*usable, *above], pilot, confidence,
                           f"{above[0].name} found more probability ({_p(above[0].outcome.log_p)}) than "
                           f"the interval of {', '.join(c.name for c in usable)} allows", result.log_p)
    result = _check_pilot(result, pilot, pilot_draws)
    return Outcome(result.log_p, result.ci, {**diagnostics, "combined_by": result.diagnostics["rule"]},
                   warnings + result.warnings, trusted=result.trusted, assumes=result.assumes)


def _inverse_variance(usable: Sequence[Candidate], confidence: float) -> Outcome:
    """Agreeing methods weighted by 1 / var of their log estimates; one method keeps its own interval."""
    if len(usable) == 1:
        (only,) = usable
        own = only.outcome.assumes or "its error estimate"
        return Outcome(only.outcome.log_p, only.outcome.ci, {"rule": "single"},
                       assumes=f"{only.name}'s own interval holds: {own}")
    sds = [max(log_sd(c.outcome, confidence), 1e-12) for c in usable]
    weights = [1.0 / sd**2 for sd in sds]
    log_p = sum(w * c.outcome.log_p for w, c in zip(weights, usable, strict=True)) / sum(weights)
    below = _combined_half([c.outcome.log_p - c.outcome.ci[0] for c in usable])
    above = _combined_half([c.outcome.ci[1] - c.outcome.log_p for c in usable])
    names = " and ".join(c.name for c in usable)
    return Outcome(log_p, (log_p - below, min(log_p + above, 0.0)), {"rule": "agreement"},
                   assumes=f"{names} agree; the interval combines their sampling errors")


def _combined_half(halves: Sequence[float]) -> float:
    """One side's half-width of agreeing methods combined by inverse variance: 1 / sqrt(sum 1 / h^2).

    Each side is combined on its own, so that an interval made asymmetric on purpose
    (importance sampling's upper end allows a heavier weight tail than was drawn) keeps
    its shape, and the combined interval is never wider than the narrower method's.
    """
    return 1.0 / math.sqrt(sum(1.0 / max(h, 1e-12) ** 2 for h in halves))


def _sharper_point(result: Outcome, finite: Sequence[Candidate], confidence: float) -> Outcome:
    """Take an unusable method's estimate as the point when it is inside the interval and sharper.

    Its interval is not relied on, but an estimate that the trusted interval admits and
    whose own lower half-width is narrower than that interval's is the better point; the
    interval itself is unchanged.
    """
    low, high = result.ci
    half = (high - low) / 2
    inside = [c for c in finite if not c.usable and low <= c.outcome.log_p <= high
              and math.isfinite(c.outcome.ci[0]) and c.outcome.log_p - c.outcome.ci[0] < half]
    if not inside:
        return result
    best = min(inside, key=lambda c: c.outcome.log_p - c.outcome.ci[0])
    return replace(result, log_p=best.outcome.log_p,
                   assumes=f"{result.assumes}; the point is {best.name}'s estimate, which it admits")


def _span(finite: Sequence[Candidate], pilot: Outcome, confidence: float, why: str, centre: float,
          up_to_pilot: bool = False) -> Outcome:
    """An interval over every finite estimate (and their finite CI ends), not trusted.

    ``up_to_pilot``: also reach the pilot's exact upper bound (when no method vouches for
    its own interval, nothing else bounds the probability from above).
    """
    lows = [c.outcome.ci[0] if math.isfinite(c.outcome.ci[0]) else c.outcome.log_p for c in finite]
    highs = [c.outcome.ci[1] if c.usable else c.outcome.log_p for c in finite]
    high = max(*highs, pilot.ci[1]) if up_to_pilot and pilot.ci[1] >= centre else max(highs)
    message = f"{why}: the interval is widened to span them and cannot be read as a {confidence:.0%} CI"
    return Outcome(centre, (min(lows), min(high, 0.0)), {"rule": "span"}, (message,), trusted=False,
                   assumes="nothing beyond the methods' estimates: a span, not a calibrated interval")


def _check_pilot(result: Outcome, pilot: Outcome, pilot_draws: int) -> Outcome:
    """Keep the pilot's exact interval: cap by its upper end, or widen to it when contradicted."""
    low, high = result.ci
    p_low, p_high = pilot.ci
    if low <= p_high and high >= p_low and result.log_p <= p_high:
        return Outcome(result.log_p, (low, min(high, p_high)), result.diagnostics, result.warnings,
                       trusted=result.trusted, assumes=result.assumes)
    message = (f"plain sampling ({pilot_draws:,} draws, exact {_p(p_low)}..{_p(p_high)}) contradicts the "
               "rare-event estimate: the interval is widened to include it")
    return Outcome(result.log_p, (min(low, p_low), max(high, p_high)), result.diagnostics,
                   (*result.warnings, message), trusted=False, assumes=result.assumes)


def _pilot_bound(pilot: Outcome, draws: int, diagnostics: dict, warnings: tuple[str, ...]) -> Outcome:
    """Nothing found by any method: the pilot's exact upper bound."""
    message = (f"no method found a catastrophe: p <= {_p(pilot.ci[1])}, the exact Clopper-Pearson bound "
               f"from {draws:,} plain draws")
    return Outcome(-math.inf, (-math.inf, pilot.ci[1]), {**diagnostics, "combined_by": "pilot bound"},
                   (*warnings, message),
                   assumes=f"nothing: an exact binomial bound from {draws:,} draws of D")


def _all_agree(usable: Sequence[Candidate], confidence: float) -> bool:
    first, *rest = usable
    return all(agree(first.outcome, c.outcome, confidence) for c in rest)


def agree(a: Outcome, b: Outcome, confidence: float) -> bool:
    """Whether two independent finite estimates differ by no more than their CIs allow."""
    spread = math.hypot(log_sd(a, confidence), log_sd(b, confidence))
    return abs(a.log_p - b.log_p) <= DISAGREEMENT_Z * spread


def _disagreement(usable: Sequence[Candidate]) -> str:
    parts = ", ".join(f"{c.name} {_p(c.outcome.log_p)}" for c in usable)
    return f"independent methods disagree ({parts})"


def _tagged(candidate: Candidate) -> list[str]:
    return [f"{candidate.name}: {w}" for w in candidate.outcome.warnings]


def _summary(outcome: Outcome) -> dict:
    return {"log10_p": to_log10(outcome.log_p), "ci_log10": [to_log10(v) for v in outcome.ci],
            "trusted": outcome.trusted, "heuristic": outcome.heuristic}


def _p(log_p: float) -> str:
    return "0" if math.isinf(log_p) else f"10^{to_log10(log_p):.2f}"
