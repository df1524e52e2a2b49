"""Two independent runs combined by `auto`: averaging when they agree, an honest CI when not."""

import math

import torch

import tailguard as tg
from tailguard._logspace import normal_log_ci
from tailguard.estimators import _replicates
from tailguard.estimators.base import Outcome

CONF = 0.95


def run(log10_p: float, rel_se: float) -> Outcome:
    log_p = log10_p * math.log(10)
    return Outcome(log_p, normal_log_ci(log_p, rel_se, CONF), {"tag": log10_p})


def test_agreeing_runs_average_and_narrow_the_ci():
    a, b = run(-8.00, 0.2), run(-8.02, 0.2)
    out = _replicates.combine(a, b, upper_bound=math.log(1e-3), confidence=CONF)
    mean = (10**-8.00 + 10**-8.02) / 2
    assert math.isclose(out.log_p, math.log(mean), rel_tol=1e-12)
    assert out.diagnostics["replicates_agree"] is True
    assert out.ci[1] - out.ci[0] < a.ci[1] - a.ci[0]  # two runs know more than one
    assert out.ci[0] < out.log_p < out.ci[1]
    assert [d["tag"] for d in out.diagnostics["replicates"]] == [-8.00, -8.02]


def test_disagreeing_runs_widen_the_ci_to_the_independent_upper_bound():
    a, b = run(-8.0, 0.05), run(-9.0, 0.05)
    upper = math.log(1e-4)
    out = _replicates.combine(a, b, upper_bound=upper, confidence=CONF)
    assert out.diagnostics["replicates_agree"] is False
    assert out.ci == (b.ci[0], upper)
    assert any("disagree" in w for w in out.warnings)


def test_one_zero_run_is_a_disagreement_and_two_keep_the_larger_bound():
    found, empty = run(-8.0, 0.1), Outcome(-math.inf, (-math.inf, math.log(1e-6)))
    out = _replicates.combine(found, empty, upper_bound=math.log(1e-4), confidence=CONF)
    assert not out.diagnostics["replicates_agree"]
    assert math.isclose(out.log_p, math.log(1e-8 / 2), rel_tol=1e-12)
    both = _replicates.combine(empty, Outcome(-math.inf, (-math.inf, math.log(2e-6))),
                               upper_bound=0.0, confidence=CONF)
    assert both.log_p == -math.inf and math.isclose(both.ci[1], math.log(2e-6))


def test_auto_runs_two_halves_of_is_when_d_has_many_data_points():
    """300 points on a segment, class 1 iff x0 > 3.6: too many points for one run to vouch for."""
    centres = torch.linspace(0.0, 2.0, 300)
    points = torch.stack([centres, torch.zeros(300)], dim=1)
    dist = tg.NoisyEmpirical(points, noise_std=0.5)
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.0, -3.6]))
    est = tg.estimate(model, dist, tg.ClassIs(1), method="auto", budget=20_000, seed=0)
    tails = [0.5 * math.erfc((3.6 - float(c)) / (0.5 * math.sqrt(2))) for c in centres]
    truth = math.log10(sum(tails) / len(tails))
    assert est.method == "is" and est.n_model_calls == 20_000
    assert len(est.diagnostics["replicates"]) == 2
    assert abs(est.log10_p - truth) < 0.15
    assert est.ci_log10[0] <= truth <= est.ci_log10[1]
    single = tg.estimate(model, tg.NoisyEmpirical(points[:3], noise_std=0.5), tg.ClassIs(1),
                         method="auto", budget=20_000, seed=0)
    assert "replicates" not in single.diagnostics
