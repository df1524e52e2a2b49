"""The interval policy of auto: agreement narrows, disagreement spans, the pilot's exact interval stays."""

import math

from tailguard._logspace import binomial_log_ci, normal_log_ci
from tailguard.estimators._policy import Candidate, combine
from tailguard.estimators.base import Outcome

CONF = 0.95
LN10 = math.log(10)


def result(log10_p: float, rel_se: float, **flags) -> Outcome:
    log_p = log10_p * LN10
    return Outcome(log_p, normal_log_ci(log_p, rel_se, CONF), **flags)


def pilot(hits: int = 0, draws: int = 10_000) -> Outcome:
    lp = math.log(hits / draws) if hits else -math.inf
    return Outcome(lp, binomial_log_ci(hits, draws, CONF))


def width(o: Outcome) -> float:
    return o.ci[1] - o.ci[0]


def test_agreeing_methods_give_an_interval_narrower_than_either():
    a, b = result(-8.00, 0.1), result(-8.03, 0.2)
    out = combine([Candidate("is", a), Candidate("splitting", b)], pilot(), 10_000, CONF)
    assert out.trusted
    assert width(out) < min(width(a), width(b))
    assert -8.03 * LN10 < out.log_p < -8.00 * LN10
    assert "agree" in out.assumes


def test_disagreeing_methods_span_both_centred_on_the_larger_and_are_not_trusted():
    a, b = result(-9.0, 0.1), result(-7.0, 0.1)
    out = combine([Candidate("is", a), Candidate("splitting", b)], pilot(), 10_000, CONF)
    assert not out.trusted
    assert out.log_p == b.log_p
    assert out.ci[0] <= a.ci[0] and out.ci[1] >= b.ci[1]
    assert any("disagree" in w for w in out.warnings)


def test_an_untrusted_method_is_only_evidence_of_at_least_its_estimate():
    heavy = result(-12.0, 0.1, trusted=False)
    good = result(-8.0, 0.1)
    out = combine([Candidate("is", heavy), Candidate("splitting", good)], pilot(), 10_000, CONF)
    assert out.trusted and out.ci == combine([Candidate("splitting", good)], pilot(), 10_000, CONF).ci
    above = result(-6.0, 0.1, trusted=False)
    widened = combine([Candidate("is", above), Candidate("splitting", good)], pilot(), 10_000, CONF)
    assert not widened.trusted and widened.log_p == good.log_p  # degenerate weights overestimate too
    assert widened.ci[0] <= good.ci[0] and widened.ci[1] >= above.log_p


def test_the_pilots_exact_interval_is_never_dropped():
    capped = combine([Candidate("is", result(-4.2, 2.0))], pilot(0, 10_000), 10_000, CONF)
    assert capped.ci[1] == pilot(0, 10_000).ci[1]  # the exact bound is tighter than is's upper end
    contradicted = combine([Candidate("is", result(-9.0, 0.05))], pilot(5, 10_000), 10_000, CONF)
    assert not contradicted.trusted
    assert contradicted.ci[1] >= pilot(5, 10_000).ci[0]
    assert any("contradicts" in w for w in contradicted.warnings)


def test_nothing_found_gives_the_proven_bound_with_its_source():
    heuristic_zero = Outcome(-math.inf, (-math.inf, -40.0), heuristic=True, trusted=False)
    out = combine([Candidate("is", heuristic_zero)], pilot(0, 20_000), 20_000, CONF)
    assert out.log_p == -math.inf
    assert out.ci[1] == binomial_log_ci(0, 20_000, CONF)[1]  # not the heuristic -40
    assert "20,000" in out.assumes


def test_a_sharper_unusable_estimate_inside_the_interval_becomes_the_point():
    wide = result(-6.0, 30.0)  # a usable but very wide interval
    sharp = result(-6.8, 0.05, trusted=False)  # heavy-tailed, so its upper end is not relied on
    out = combine([Candidate("is", sharp), Candidate("splitting", wide)], pilot(), 10_000, CONF)
    alone = combine([Candidate("splitting", wide)], pilot(), 10_000, CONF)
    assert out.log_p == sharp.log_p
    assert out.ci == alone.ci and out.trusted


def test_agreeing_methods_with_a_lopsided_interval_give_one_no_wider_than_the_narrower():
    lp = -9.0 * LN10
    lopsided = Outcome(lp, (lp - 0.2, lp + 0.6))  # an upper end that allows a heavier tail
    broad = Outcome(lp + 0.3, (lp + 0.3 - 2.0, lp + 0.3 + 2.0))
    out = combine([Candidate("is", lopsided), Candidate("splitting", broad)], pilot(), 10_000, CONF)
    assert out.diagnostics["combined_by"] == "agreement"
    assert width(out) <= width(lopsided)
    assert out.log_p - out.ci[0] < out.ci[1] - out.log_p  # the shape is kept
