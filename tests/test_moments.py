"""The moment-propagation estimator: exact cases, closed forms, heuristic accuracy, gradients."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

import tailguard as tg
from tailguard.estimators._propagate import gelu_stats, relu_stats, tanh_stats
from tailguard.estimators.moments import MomentPropagation, log_orthant_me

F64 = torch.float64


def correlated_gaussian(d, seed=1):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64)
    mean = torch.randn(d, generator=g, dtype=F64) * 0.3
    return mean, a @ a.T / d + 0.3 * torch.eye(d, dtype=F64)


def linear_model(d, out, seed=2):
    torch.manual_seed(seed)
    return nn.Linear(d, out).double()


@pytest.mark.parametrize("log10_p", [-2.0, -15.0])
def test_exact_for_a_linear_model_under_correlated_gaussian(log10_p):
    mean, cov = correlated_gaussian(6)
    model = linear_model(6, 2)
    w, b = model.weight[1].detach(), float(model.bias[1].detach())
    sd = math.sqrt(float(w @ cov @ w))
    threshold = float(w @ mean) + b + stats.norm.isf(10.0**log10_p) * sd
    est = tg.estimate(model, tg.Gaussian(mean, cov=cov), tg.OutputAbove(1, threshold), "moments", 1)
    truth = stats.norm.logsf((threshold - float(w @ mean) - b) / sd)
    assert est.log10_p * math.log(10) == pytest.approx(truth, abs=1e-8)
    assert not est.heuristic and est.diagnostics["exact"]
    assert est.ci_log10 == (est.log10_p, est.log10_p)
    assert est.n_model_calls == 0


def test_mixture_of_two_gaussians_is_the_weighted_sum_of_exact_parts():
    model = linear_model(3, 1)
    points = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]], dtype=F64)
    dist = tg.NoisyEmpirical(points, torch.tensor(0.4, dtype=F64))
    est = tg.estimate(model, dist, tg.OutputAbove(0, 1.5), "moments", 1)
    w, b = model.weight[0].detach(), float(model.bias[0].detach())
    parts = [stats.norm.logsf((1.5 - float(w @ c) - b) / (0.4 * float(w.norm()))) for c in points]
    truth = np.logaddexp(*parts) - math.log(2)
    assert est.log10_p * math.log(10) == pytest.approx(truth, abs=1e-10)
    assert est.diagnostics["components"] == 2


@pytest.mark.parametrize(
    "stats_fn, f, tol",
    [
        (relu_stats, lambda z: max(z, 0.0), 1e-9),  # closed form
        (gelu_stats, lambda z: z * stats.norm.cdf(z), 1e-6),  # quadrature for E[f^2]
        (tanh_stats, math.tanh, 1e-4),  # quadrature of residuals
    ],
)
@pytest.mark.parametrize("mu, sd", [(0.3, 1.2), (-2.0, 0.5), (1.5, 3.0)])
def test_unit_mean_and_variance_match_numerical_integration(stats_fn, f, tol, mu, sd):
    def expect(g):
        dens = stats.norm.pdf
        return integrate.quad(lambda z: g(z) * dens(z, mu, sd), mu - 12 * sd, mu + 12 * sd, limit=200)[0]

    mean, var, _, _ = stats_fn(torch.tensor([mu], dtype=F64), torch.tensor([sd**2], dtype=F64))
    true_mean = expect(f)
    assert float(mean) == pytest.approx(true_mean, abs=tol)
    assert float(var) == pytest.approx(expect(lambda z: f(z) ** 2) - true_mean**2, abs=tol)


def test_two_layer_mlp_is_close_to_plain_sampling_near_one_percent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1)).double()
    dist = tg.Gaussian(torch.zeros(4, dtype=F64), std=1.0)
    with torch.no_grad():
        y = model(dist.sample(200_000, torch.Generator().manual_seed(5)))[:, 0]
    threshold = float(torch.quantile(y, 0.99))
    spec = tg.OutputAbove(0, threshold)
    mc = tg.estimate(model, dist, spec, "mc", 200_000, seed=1)
    est = tg.estimate(model, dist, spec, "moments", 1)
    assert est.heuristic and est.ci_log10 == (-math.inf, 0.0)
    assert any("heuristic" in w for w in est.warnings)
    assert abs(est.log10_p - mc.log10_p) < 0.5


def test_several_margins_use_scipy_and_agree_with_mendell_elston():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 12), nn.GELU(), nn.Linear(12, 4)).double()
    dist = tg.Gaussian(torch.zeros(4, dtype=F64), std=1.0)
    for k in range(4):
        est = tg.estimate(model, dist, tg.ClassIs(k), "moments", 1)
        assert est.diagnostics["genz_components"] == 1
        lp = tg.log_prob(model, dist, tg.ClassIs(k), "moments")
        assert float(lp.detach()) == pytest.approx(est.log10_p * math.log(10), abs=0.05)


def test_mendell_elston_is_exact_for_independent_margins_far_in_the_tail():
    mean = torch.tensor([[-8.0, -6.0, 1.0]], dtype=F64)
    cov = torch.diag(torch.tensor([1.0, 0.5, 2.0], dtype=F64))[None]
    truth = sum(stats.norm.logcdf(m / math.sqrt(v)) for m, v in [(-8, 1.0), (-6, 0.5), (1, 2.0)])
    assert float(log_orthant_me(mean, cov)) == pytest.approx(truth, abs=1e-9)


def test_diagonal_and_full_covariance_modes_both_run():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    dist = tg.Gaussian(torch.tensor([0.1, 0.2, -0.3]), std=0.7)
    full = tg.estimate(model, dist, tg.ClassIs(0), "moments", 1)
    diag = tg.estimate(model, dist, tg.ClassIs(0), "moments", 1, full_cov_max_dim=2)
    none = tg.estimate(model, dist, tg.ClassIs(0), "moments", 1, full_cov_max_dim=0)
    assert full.diagnostics["covariance"] == "full" and none.diagnostics["covariance"] == "diagonal"
    mc = tg.estimate(model, dist, tg.ClassIs(0), "mc", 100_000)
    for est in (full, diag, none):
        assert math.isfinite(est.log10_p) and abs(est.log10_p - mc.log10_p) < 0.5


class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x


@pytest.mark.parametrize("layer, name", [(nn.Conv1d(1, 1, 1), "Conv1d"), (Doubler(), "Doubler")])
def test_unsupported_layers_are_named(layer, name):
    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.ReLU(), layer))
    dist, spec = tg.Gaussian(torch.zeros(3)), tg.OutputAbove(0, 0.0)
    assert name in MomentPropagation().unsupported_reason(model, dist, spec)
    with pytest.raises(tg.UnsupportedError, match=name):
        tg.estimate(model, dist, spec, "moments", 1)


def test_unsupported_spec_and_linear_on_unflattened_input():
    dist = tg.Gaussian(torch.zeros(2, 3))
    reason = MomentPropagation().unsupported_reason(nn.Linear(3, 1), dist, tg.OutputAbove(0, 0.0))
    assert "Flatten" in reason or "flatten" in reason
    flat = nn.Sequential(nn.Flatten(), nn.Linear(6, 2), nn.Dropout(0.5), nn.Identity())
    est = tg.estimate(flat, dist, tg.OutputAbove(0, 1.0), "moments", 1)
    assert est.diagnostics["exact"]
    predicate = tg.Predicate(lambda x, y: y[:, 0] > 0)
    assert MomentPropagation().unsupported_reason(flat, dist, predicate) is not None


def test_log_prob_gradients_match_finite_differences_with_several_margins():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.GELU(), nn.Linear(8, 3)).double()
    mean = torch.tensor([0.2, -0.1, 0.3], dtype=F64, requires_grad=True)
    std = torch.tensor(0.6, dtype=F64, requires_grad=True)

    def value(m, s):
        return tg.log_prob(model, tg.Gaussian(m, std=s), tg.ClassIs(2), method="moments")

    value(mean, std).backward()
    eps = 1e-6
    with torch.no_grad():
        for i in range(3):
            e = torch.zeros(3, dtype=F64)
            e[i] = eps
            fd = (value(mean + e, std) - value(mean - e, std)) / (2 * eps)
            assert float(mean.grad[i]) == pytest.approx(float(fd), rel=1e-4, abs=1e-8)
        fd = (value(mean, std + eps) - value(mean, std - eps)) / (2 * eps)
        assert float(std.grad) == pytest.approx(float(fd), rel=1e-4, abs=1e-8)
        weight = model[2].weight
        base = weight[1, 4].item()
        weight[1, 4] = base + eps
        up = value(mean, std).item()
        weight[1, 4] = base - eps
        down = value(mean, std).item()
        weight[1, 4] = base
    assert float(weight.grad[1, 4]) == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-8)


def test_settings_are_validated():
    with pytest.raises(tg.InvalidArgumentError, match="full_cov_max_dim"):
        MomentPropagation(full_cov_max_dim=-1)
    with pytest.raises(tg.InvalidArgumentError, match="genz_max_components"):
        MomentPropagation(genz_max_components=-2)
