"""Every registered estimator passes the same checks (in the spirit of sklearn's check_estimator).

Budget respected, same seed -> same result, JSON round trip, impossible events
handled, CIs that cover exact answers, and gradients of differentiable
estimators that match finite differences.
"""

import math

import pytest
import torch
from scipy import stats
from torch import nn

import tailguard as tg
from tailguard.estimators.base import DifferentiableEstimator, build


def _takes_gaussian_inputs(name: str) -> bool:
    """The suite's cases are Gaussian; token-only estimators have their own tests."""
    probe = nn.Linear(2, 1)
    return (
        build(name, {}).unsupported_reason(probe, tg.Gaussian(torch.zeros(2)), tg.OutputAbove(0, 0.0)) is None
    )


METHODS = [m for m in tg.available_methods() if _takes_gaussian_inputs(m)]
DIFFERENTIABLE = [m for m in METHODS if isinstance(build(m, {}), DifferentiableEstimator)]


def linear_case(log10_p: float, d: int = 5):
    """A linear score under correlated Gaussian input with an exactly known probability."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = a @ a.T / d + 0.3 * torch.eye(d, dtype=torch.float64)
    mean = torch.randn(d, generator=g, dtype=torch.float64) * 0.1
    model = nn.Linear(d, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=torch.float64))
        model.bias.zero_()
    w = model.weight[0].detach()
    sd = math.sqrt(float(w @ cov @ w))
    z = -stats.norm.isf(10.0**log10_p)  # p = Phi(-(t - w.mu)/sd)
    threshold = float(w @ mean) - z * sd
    return model, tg.Gaussian(mean, cov=cov), tg.OutputAbove(0, threshold)


def run(method, case, budget, seed=0):
    model, dist, spec = case
    return tg.estimate(model, dist, spec, method=method, budget=budget, seed=seed)


def covers(est, truth, slack=1e-9):
    low, high = est.ci_log10
    return low - slack <= truth <= high + slack


@pytest.mark.parametrize("method", METHODS)
def test_budget_is_respected(method):
    est = run(method, linear_case(-4.0), budget=20_000)
    assert 0 <= est.n_model_calls <= 20_000
    assert est.method == method


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_gives_same_estimate(method):
    a = run(method, linear_case(-4.0), budget=20_000, seed=3)
    b = run(method, linear_case(-4.0), budget=20_000, seed=3)
    assert (a.log10_p, a.ci_log10, a.n_model_calls) == (b.log10_p, b.ci_log10, b.n_model_calls)


@pytest.mark.parametrize("method", METHODS)
def test_json_round_trip(method):
    est = run(method, linear_case(-4.0), budget=20_000)
    assert tg.Estimate.from_json(est.to_json()) == est


@pytest.mark.parametrize("method", METHODS)
def test_impossible_event_gives_minus_inf_or_tiny_with_finite_upper_bound(method):
    model = nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.fill_(-1.0)
    est = tg.estimate(model, tg.Gaussian(torch.zeros(3)), tg.OutputAbove(0, 0.0), method, 20_000)
    assert est.log10_p == -math.inf
    assert math.isfinite(est.ci_log10[1]) and est.ci_log10[1] <= 0.0
    assert tg.Estimate.from_json(est.to_json()) == est


@pytest.mark.parametrize("method", METHODS)
def test_ci_covers_a_common_event_and_point_is_close(method):
    truth = -2.0
    est = run(method, linear_case(truth), budget=100_000)
    assert covers(est, truth)
    assert abs(est.log10_p - truth) < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in METHODS if m != "mc"])
def test_ci_coverage_on_a_rare_exact_case(method):
    truth = -9.0
    hits = sum(covers(run(method, linear_case(truth), 30_000, seed), truth) for seed in range(20))
    assert hits >= 16, f"{method}: CI covered the truth {hits}/20 times"


@pytest.mark.parametrize("method", DIFFERENTIABLE)
def test_log_prob_and_its_gradients_match_the_exact_answer(method):
    """Linear score under N(mean, 0.5^2 I): ln p = ln Phi(z) with z = (w.mean + b - t) / (0.5 |w|)."""
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    model = nn.Linear(3, 1).double()
    with torch.no_grad():
        model.weight.copy_(w[None])
        model.bias.zero_()
    mean = torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64, requires_grad=True)
    sd = 0.5 * float(w.norm())
    threshold = float(w @ mean.detach()) + 3.7 * sd  # p ~ 1e-4
    lp = tg.log_prob(model, tg.Gaussian(mean, std=0.5), tg.OutputAbove(0, threshold), method=method, seed=0)
    lp.backward()
    z = torch.tensor(-3.7, dtype=torch.float64)
    exact = float(torch.special.log_ndtr(z))
    hazard = float(torch.exp(-0.5 * z**2 - 0.5 * math.log(2 * math.pi) - torch.special.log_ndtr(z)))
    assert float(lp) == pytest.approx(exact, abs=0.25)  # within ~0.1 in log10
    assert torch.allclose(mean.grad, w / sd * hazard, rtol=0.1)
    assert float(model.bias.grad[0]) == pytest.approx(hazard / sd, rel=0.1)
