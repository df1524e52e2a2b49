"""Adaptive multilevel splitting on cases with exactly known probabilities."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import tailguard as tg
from tailguard.estimators.splitting import lognormal_mean_log_ci


class Score(nn.Module):
    """A model whose single output is a fixed function of the input (the spec checks > 0)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.unused = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        return self.fn(x)[:, None]


ABOVE_ZERO = tg.OutputAbove(0, 0.0)


def linear_margin(log10_p, d=20):
    """w.x > t under a correlated Gaussian: p = Phi(-(t - w.mu) / sqrt(w' cov w))."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = a @ a.T / d + 0.3 * torch.eye(d, dtype=torch.float64)
    mean = 0.1 * torch.randn(d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    t = float(w @ mean) + stats.norm.isf(10.0**log10_p) * math.sqrt(float(w @ cov @ w))
    return Score(lambda x: x @ w - t), tg.Gaussian(mean, cov=cov), log10_p


def and_of_halfspaces(k=3, a=3.0, d=8):
    """All of x_1..x_k above a: p = Phi(-a)^k."""
    truth = k * stats.norm.logsf(a) / math.log(10)
    return Score(lambda x: (x[:, :k] - a).min(1).values), tg.Gaussian(torch.zeros(d)), truth


def or_of_directions(m=4, t=6.0, d=8):
    """Any of x_1..x_m above t: p = 1 - (1 - Phi(-t))^m (m separate failure regions)."""
    truth = math.log10(-math.expm1(m * math.log1p(-stats.norm.sf(t))))
    return Score(lambda x: (x[:, :m] - t).max(1).values), tg.Gaussian(torch.zeros(d)), truth


def splitting(case, budget, seed=0, **settings):
    model, dist, _ = case
    return tg.estimate(model, dist, ABOVE_ZERO, "splitting", budget=budget, seed=seed, **settings)


@pytest.mark.parametrize(
    "case", [linear_margin(-9.0), and_of_halfspaces(), or_of_directions()], ids=["lin", "and", "or"]
)
def test_accurate_on_exact_cases(case):
    est = splitting(case, budget=100_000)
    truth = case[2]
    assert abs(est.log10_p - truth) < 0.2, (est.log10_p, truth)
    assert est.ci_log10[0] <= truth <= est.ci_log10[1]
    assert est.ci_log10[1] - est.ci_log10[0] < 1.0


@pytest.mark.parametrize("budget", [3_000, 12_345, 50_000])
def test_budget_is_never_exceeded(budget):
    assert splitting(linear_margin(-12.0), budget).n_model_calls <= budget
    fixed = splitting(linear_margin(-12.0), budget, n_particles=40, n_repeats=3)
    assert fixed.n_model_calls <= budget


def test_same_seed_same_result_and_diagnostics():
    a = splitting(or_of_directions(), 20_000, seed=5)
    b = splitting(or_of_directions(), 20_000, seed=5)
    c = splitting(or_of_directions(), 20_000, seed=6)
    assert (a.log10_p, a.ci_log10, a.n_model_calls) == (b.log10_p, b.ci_log10, b.n_model_calls)
    assert a.diagnostics == b.diagnostics
    assert a.log10_p != c.log10_p
    d = a.diagnostics
    assert d["n_repeats"] == len(d["repeat_log10_p"]) == len(d["n_levels"]) == 10
    assert all(status == "done" for status in d["repeat_status"])
    assert all(0.0 < rate <= 1.0 for rate in d["acceptance"])


def test_noisy_empirical_mixture_matches_exact_and_plain_sampling():
    """x_0 > t under a Gaussian around each of a few data points: p = mean_k Phi((c_k0 - t)/s)."""
    points = torch.tensor([[0.0, 0.0], [1.0, -1.0], [2.0, 0.5], [-1.0, 1.0]], dtype=torch.float64)
    noise, t = 0.5, 3.3
    truth = math.log10(float(np.mean(stats.norm.sf((t - points[:, 0].numpy()) / noise))))
    model = Score(lambda x: x[:, 0] - t)
    dist = tg.NoisyEmpirical(points, noise)
    est = tg.estimate(model, dist, ABOVE_ZERO, "splitting", budget=30_000, seed=0)
    mc = tg.estimate(model, dist, ABOVE_ZERO, "mc", budget=300_000, seed=0)
    assert -3.5 < truth < -2.5
    assert abs(est.log10_p - truth) < 0.15
    assert est.ci_log10[0] <= truth <= est.ci_log10[1]
    assert est.ci_log10[0] <= mc.log10_p <= est.ci_log10[1]


def test_impossible_event_gives_minus_inf_and_a_finite_upper_bound():
    model = Score(lambda x: -1.0 - x[:, 0] ** 2)
    est = tg.estimate(model, tg.Gaussian(torch.zeros(3)), ABOVE_ZERO, "splitting", 20_000)
    assert est.log10_p == -math.inf
    assert est.ci_log10[0] == -math.inf and -12 < est.ci_log10[1] < 0
    assert est.warnings
    assert tg.Estimate.from_json(est.to_json()) == est


def test_constant_score_plateau_gives_minus_inf_and_upper_bound():
    model = Score(lambda x: torch.full((x.shape[0],), -1.0, dtype=torch.float64))
    est = tg.estimate(model, tg.Gaussian(torch.zeros(3)), ABOVE_ZERO, "splitting", 20_000)
    assert est.log10_p == -math.inf
    assert math.log10(3 / 20_000) - 1 < est.ci_log10[1] < 0
    assert set(est.diagnostics["repeat_status"]) == {"empty"}


def test_budget_too_small_for_the_depth_gives_an_honest_upper_bound():
    case = linear_margin(-30.0, d=5)
    est = splitting(case, budget=5_000, max_levels=8)
    assert est.log10_p == -math.inf
    assert case[2] < est.ci_log10[1] < -2
    assert "upper bound" in est.warnings[0]


def test_predicate_and_moveless_distributions_are_rejected():
    model, dist, _ = linear_margin(-3.0, d=3)
    spec = tg.Predicate(lambda x, y: y[:, 0] > 0)
    with pytest.raises(tg.UnsupportedError, match="splitting"):
        tg.estimate(model, dist, spec, "splitting", budget=10_000)


@pytest.mark.parametrize(
    "settings",
    [{"level_fraction": 1.5}, {"n_steps": 0}, {"n_repeats": 1}, {"n_particles": 5}],
)
def test_bad_settings_name_the_argument(settings):
    (name,) = settings
    with pytest.raises(tg.InvalidArgumentError, match=name):
        splitting(linear_margin(-3.0, d=3), 10_000, **settings)


def test_cox_interval_covers_the_lognormal_mean_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    mu, sigma, k = -20.0, 0.8, 10
    truth = mu + sigma**2 / 2
    hits = 0
    for _ in range(2000):
        low, high = lognormal_mean_log_ci(rng.normal(mu, sigma, k), 0.95)
        hits += low <= truth <= high
    assert 0.92 <= hits / 2000 <= 0.98


@pytest.mark.slow
def test_ci_coverage_over_seeds_on_a_rare_exact_case():
    case = or_of_directions(m=3, t=6.5)
    hits = sum(
        est.ci_log10[0] <= case[2] <= est.ci_log10[1]
        for est in (splitting(case, 30_000, seed) for seed in range(20))
    )
    assert hits >= 16, f"the CI covered the truth {hits}/20 times"
