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

METHODS = tg.available_methods()
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
def test_log_prob_gradients_match_finite_differences(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    mean = torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64, requires_grad=True)
    spec = tg.ClassIs(1)

    def value(m):
        return tg.log_prob(model, tg.Gaussian(m, std=0.5), spec, method=method, seed=0)

    lp = value(mean)
    lp.backward()
    weight = model[0].weight
    assert weight.grad is not None and mean.grad is not None
    eps = 1e-5
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = eps
        with torch.no_grad():
            fd = (value(mean + e) - value(mean - e)) / (2 * eps)
        assert float(mean.grad[i]) == pytest.approx(float(fd), rel=2e-3, abs=1e-6)
    with torch.no_grad():
        base = weight[0, 0].item()
        weight[0, 0] = base + eps
        up = value(mean).item()
        weight[0, 0] = base - eps
        down = value(mean).item()
        weight[0, 0] = base
    assert float(weight.grad[0, 0]) == pytest.approx((up - down) / (2 * eps), rel=2e-3, abs=1e-6)
