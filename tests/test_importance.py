"""Cross-entropy importance sampling ("is") on cases with exact answers."""

import math

import pytest
import torch
from scipy import integrate, stats
from torch import nn

import tailguard as tg
from tailguard.errors import UnsupportedError
from tailguard.estimators.importance import ImportanceSampling


class MinOut(nn.Module):
    """min over a linear layer's outputs: > 0 iff every half-space holds (AND)."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(x).min(1, keepdim=True).values


class MaxOut(MinOut):
    """max over a linear layer's outputs: > 0 iff any half-space holds (OR)."""

    def forward(self, x):
        return self.lin(x).max(1, keepdim=True).values


def axis_layer(d: int, k: int, bias: float) -> nn.Linear:
    lin = nn.Linear(d, k).double()
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[torch.arange(k), torch.arange(k)] = 1.0
        lin.bias.fill_(bias)
    return lin


def std_gaussian(d: int) -> tg.Gaussian:
    return tg.Gaussian(torch.zeros(d, dtype=torch.float64))


def linear_case(d: int = 6, p: float = 1e-9):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    cov = a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    t = -stats.norm.ppf(p) * float(torch.sqrt(w @ cov @ w))
    lin = nn.Linear(d, 1).double()
    with torch.no_grad():
        lin.weight.copy_(w[None])
        lin.bias.fill_(-t)
    return lin, tg.Gaussian(torch.zeros(d, dtype=torch.float64), cov=cov), math.log10(p)


class ReluClassifier(nn.Module):
    """2-D inputs, 3 classes; class 2 wins iff relu(x1 - a) + relu(x2 - a) > c."""

    def __init__(self, a: float, c: float):
        super().__init__()
        self.hidden = nn.Linear(2, 2).double()
        with torch.no_grad():
            self.hidden.weight.copy_(torch.eye(2))
            self.hidden.bias.fill_(-a)
        self.c = c

    def forward(self, x):
        h = torch.relu(self.hidden(x))
        zeros = torch.zeros(x.shape[0], 2, dtype=x.dtype)
        return torch.cat([zeros, (h.sum(1) - self.c)[:, None]], dim=1)


def relu_classifier_truth(a: float, c: float) -> float:
    """log10 P(relu(z1 - a) + relu(z2 - a) > c) for z ~ N(0, I_2), by 1-D quadrature."""

    def inner(z1):
        rest = c - max(z1 - a, 0.0)
        return stats.norm.pdf(z1) * (stats.norm.sf(a + rest) if rest > 0 else 1.0)

    low = integrate.quad(inner, -10, a, epsabs=0, epsrel=1e-10)[0]
    high = integrate.quad(inner, a, a + c, epsabs=0, epsrel=1e-10)[0]
    return math.log10(low + high + stats.norm.sf(a + c))


def check(est: tg.Estimate, truth: float, tol: float, cover: bool = True) -> None:
    assert abs(est.log10_p - truth) < tol, (est, truth)
    low, high = est.ci_log10
    if cover:
        assert low <= truth <= high, (est, truth)


def test_linear_margin_under_correlated_gaussian():
    model, dist, truth = linear_case()
    est = tg.estimate(model, dist, tg.OutputAbove(0, 0.0), method="is", budget=10_000, seed=0)
    check(est, truth, 0.1)
    assert est.diagnostics["reached_event"] and not est.warnings


@pytest.mark.slow
def test_and_of_three_half_spaces():
    a = -stats.norm.ppf(1e-3)  # p = 1e-9
    model = MinOut(axis_layer(6, 3, -a))
    est = tg.estimate(model, std_gaussian(6), tg.OutputAbove(0, 0.0), method="is",
                      budget=20_000, seed=0)
    check(est, 3 * stats.norm.logsf(a) / math.log(10), 0.15)


def test_or_of_orthogonal_directions_finds_every_region():
    m, p = 4, 1e-8
    t = -stats.norm.ppf(-math.expm1(math.log1p(-p) / m))
    model = MaxOut(axis_layer(6, m, -t))
    est = tg.estimate(model, std_gaussian(6), tg.OutputAbove(0, 0.0), method="is",
                      budget=12_000, seed=0)
    # a proposal on one region only would be log10(4) = 0.6 too low
    check(est, math.log10(p), 0.15, cover=False)
    assert est.diagnostics["n_components"] >= m


@pytest.mark.slow
def test_small_relu_classifier():
    a, c = 3.0, 3.5
    truth = relu_classifier_truth(a, c)
    errors = [
        abs(tg.estimate(ReluClassifier(a, c), std_gaussian(2), tg.ClassIs(2), method="is",
                        budget=20_000, seed=seed).log10_p - truth)
        for seed in range(9)
    ]
    # the corner between the two arms carries ~10 % of p and the proposal can thin it out,
    # so single runs at this budget miss now and then (about 1 in 6 by more than 0.1, over
    # 30 seeds) and the CI is not always right here (see the module's known limits)
    assert sorted(errors)[4] < 0.1, errors


@pytest.mark.parametrize("budget", [2_000, 7_777])
def test_budget_is_respected(budget):
    model, dist, _ = linear_case()
    est = tg.estimate(model, dist, tg.OutputAbove(0, 0.0), method="is", budget=budget, seed=3)
    assert est.n_model_calls <= budget
    assert est.n_model_calls >= 0.9 * budget


def test_same_seed_same_result():
    model, dist, _ = linear_case()
    runs = [tg.estimate(model, dist, tg.OutputAbove(0, 0.0), method="is", budget=4_000, seed=5)
            for _ in range(2)]
    assert runs[0].log10_p == runs[1].log10_p
    assert runs[0].ci_log10 == runs[1].ci_log10


class NegativeNorm(nn.Module):
    """-(|x|^2 + 1): graded but never above 0."""

    def forward(self, x):
        return -(x**2).sum(1, keepdim=True) - 1.0


def test_impossible_event_gives_minus_inf_and_a_finite_bound():
    est = tg.estimate(NegativeNorm(), std_gaussian(3), tg.OutputAbove(0, 0.0), method="is",
                      budget=4_000, seed=0)
    assert est.log10_p == -math.inf
    assert math.isfinite(est.ci_log10[1]) and est.ci_log10[1] <= 0.0
    assert est.warnings


def test_predicate_is_rejected():
    model, dist, _ = linear_case()
    spec = tg.Predicate(lambda x, y: y[:, 0] > 0)
    with pytest.raises(UnsupportedError):
        tg.estimate(model, dist, spec, method="is", budget=4_000, seed=0)


def test_surrogate_gradients_match_finite_differences():
    """d/dtheta of the soft objective on fixed proposal draws, for a weight and D's mean."""
    model, _, _ = linear_case(d=3, p=1e-6)
    mean = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    dist = tg.Gaussian(mean, std=torch.tensor([1.0, 0.8, 1.2], dtype=torch.float64))
    spec = tg.OutputAbove(0, 0.0)
    est = ImportanceSampling(temperature=0.5)
    x, log_q = est.fixed_draws(model, dist, spec, 4_000, torch.Generator().manual_seed(0))
    value = est.surrogate(model, dist, spec, x, log_q)
    value.backward()
    h = 1e-5
    for param, index in ((model.weight, (0, 1)), (mean, (2,))):
        grad = float(param.grad[index])
        with torch.no_grad():
            param[index] += h
            up = float(est.surrogate(model, dist, spec, x, log_q))
            param[index] -= 2 * h
            down = float(est.surrogate(model, dist, spec, x, log_q))
            param[index] += h
        assert grad == pytest.approx((up - down) / (2 * h), rel=1e-4, abs=1e-6)


def test_log_prob_is_close_to_the_estimate_and_differentiable():
    model, dist, truth = linear_case(d=3, p=1e-6)
    lp = tg.log_prob(model, dist, tg.OutputAbove(0, 0.0), method="is", budget=6_000, seed=0,
                     temperature=0.01)
    lp.backward()
    assert abs(float(lp.detach()) / math.log(10) - truth) < 0.2
    assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all()


def test_noisy_empirical_linear_margin_matches_the_mixture_formula():
    """p = mean_i Phi((w.c_i + b) / sigma) exactly for a unit-norm w; d = 64, 300 points."""
    g = torch.Generator().manual_seed(0)
    points = torch.randn(300, 64, generator=g, dtype=torch.float64)
    w = torch.randn(64, generator=g, dtype=torch.float64)
    w = w / w.norm()
    t, sigma = 5.5, 0.5
    lin = nn.Linear(64, 1).double()
    with torch.no_grad():
        lin.weight.copy_(w[None])
        lin.bias.fill_(-t)
    truth = math.log10(stats.norm.sf((t - (points @ w).numpy()) / sigma).mean())
    est = tg.estimate(lin, tg.NoisyEmpirical(points, sigma), tg.OutputAbove(0, 0.0),
                      method="is", budget=30_000, seed=0)
    # many data points each carry a sliver of p; components the elites never visit are
    # dropped, so the estimate can sit a little low with a CI that misses (known limit)
    check(est, truth, 0.15, cover=False)


def test_too_few_draws_of_d_per_data_point_refuse_the_upper_end():
    g = torch.Generator().manual_seed(5)
    points = torch.randn(1000, 4, generator=g, dtype=torch.float64)
    dist = tg.NoisyEmpirical(points, 0.5)
    model = torch.nn.Linear(4, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.fill_(0.5)
    est = tg.estimate(model, dist, tg.OutputAbove(0, 3.5), method="is", budget=10_000, seed=0)
    assert math.isfinite(est.log10_p)
    assert not est.trusted and est.ci_log10[1] == 0.0
    assert any("times per data point" in w for w in est.warnings)
