"""Input distributions: sampling, densities against scipy, reversibility of the MCMC moves."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import tailguard as tg


def _cov(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.5 * torch.eye(d, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["scalar", "diag", "full"])
def test_gaussian_log_prob_matches_scipy(kind):
    d = 4
    mean = torch.arange(d, dtype=torch.float64)
    if kind == "scalar":
        dist, cov = tg.Gaussian(mean, std=2.0), 4.0 * torch.eye(d)
    elif kind == "diag":
        std = torch.tensor([0.5, 1.0, 2.0, 3.0])
        dist, cov = tg.Gaussian(mean, std=std), torch.diag(std.double() ** 2)
    else:
        cov = _cov(d)
        dist = tg.Gaussian(mean, cov=cov)
    x = dist.sample(7, torch.Generator().manual_seed(1))
    want = stats.multivariate_normal(mean.numpy(), cov.numpy()).logpdf(x.numpy())
    assert torch.allclose(dist.log_prob(x), torch.as_tensor(want), atol=1e-9)


def test_gaussian_samples_have_the_requested_moments():
    cov = _cov(3)
    dist = tg.Gaussian(torch.tensor([1.0, -2.0, 0.5]), cov=cov)
    x = dist.sample(200_000, torch.Generator().manual_seed(0))
    assert torch.allclose(x.mean(0), dist.mean.double(), atol=0.02)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.03)


def test_gaussian_keeps_event_shape_of_mean():
    dist = tg.Gaussian(torch.zeros(8, 8), std=0.3)
    x = dist.sample(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 8, 8)
    assert dist.log_prob(x).shape == (5,)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"std": -1.0}, "std"),
        ({"std": torch.tensor([1.0, 0.0, 1.0])}, "std"),
        ({"std": torch.ones(4)}, "std"),
        ({"cov": -torch.eye(3)}, "positive definite"),
        ({"cov": torch.tensor([[1.0, 0.5, 0], [0.0, 1, 0], [0, 0, 1]])}, "symmetric"),
        ({"cov": torch.eye(2)}, "cov"),
        ({"std": float("nan")}, "NaN"),
    ],
)
def test_gaussian_rejects_bad_parameters_naming_them(kwargs, word):
    with pytest.raises(tg.InvalidArgumentError, match=word):
        tg.Gaussian(torch.zeros(3), **kwargs)


def test_noisy_empirical_log_prob_is_the_mixture_density():
    pts = torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    dist = tg.NoisyEmpirical(pts, noise_std=0.7)
    x = torch.tensor([[0.5, -0.2], [2.0, 2.0]], dtype=torch.float64)
    comps = [stats.multivariate_normal(p.numpy(), 0.49 * np.eye(2)).pdf(x.numpy()) for p in pts]
    want = torch.log(torch.as_tensor(sum(comps) / 2))
    assert torch.allclose(dist.log_prob(x), want, atol=1e-10)


def _detailed_balance_gap(dist, step, n=400_000, seed=0):
    """Joint histogram of (x, x') on a 1-D grid must be symmetric if the move is reversible."""
    g = torch.Generator().manual_seed(seed)
    x = dist.sample(n, g)
    y = dist.propose(x, torch.full((n,), step), g)
    edges = torch.linspace(-4, 6, 9, dtype=torch.float64)
    bx = torch.bucketize(x.reshape(n), edges)
    by = torch.bucketize(y.reshape(n), edges)
    counts = torch.zeros(10, 10)
    counts.index_put_((bx, by), torch.ones(n), accumulate=True)
    return (counts - counts.T).abs().max() / n


@pytest.mark.parametrize(
    "dist",
    [
        tg.Gaussian(torch.tensor([1.0]), std=1.5),
        tg.NoisyEmpirical(torch.tensor([[-1.0], [2.5]]), noise_std=0.8),
    ],
)
def test_propose_is_reversible_and_leaves_d_invariant(dist):
    assert _detailed_balance_gap(dist, 0.6) < 3e-3
    g = torch.Generator().manual_seed(5)
    x = dist.sample(200_000, g)
    for _ in range(5):
        x = dist.propose(x, torch.full((x.shape[0],), 0.8), g)
    fresh = dist.sample(200_000, g)
    ks = stats.ks_2samp(x.reshape(-1).numpy(), fresh.reshape(-1).numpy())
    assert ks.pvalue > 1e-3


def test_moments_of_noisy_empirical_are_per_component():
    pts = torch.randn(5, 3)
    m = tg.NoisyEmpirical(pts, 0.2).moments()
    assert m.means.shape == (5, 3) and m.covs.shape == (5, 3, 3)
    assert torch.allclose(torch.logsumexp(m.log_weights, 0), torch.zeros((), dtype=torch.float64))
    assert torch.allclose(m.covs[2], 0.04 * torch.eye(3, dtype=torch.float64))


def test_gaussian_log_prob_has_gradients_to_its_parameters():
    mean = torch.zeros(3, requires_grad=True)
    std = torch.tensor(1.0, requires_grad=True)
    dist = tg.Gaussian(mean, std=std)
    x = torch.full((2, 3), 2.0, dtype=torch.float64)
    dist.log_prob(x).sum().backward()
    # d/dmu = sum_rows (x - mu) / s^2 = 2 * 2
    assert torch.allclose(mean.grad, torch.full((3,), 4.0))
    # d/ds sum over 6 entries of [-(x-mu)^2 / (2 s^2) - log s] = 6 * ((x-mu)^2 / s^3 - 1 / s) = 18
    assert std.grad.item() == pytest.approx(18.0)


def test_shape_mismatch_in_log_prob_names_the_expected_shape():
    dist = tg.Gaussian(torch.zeros(4))
    with pytest.raises(tg.ShapeMismatchError, match=r"\(n, 4\)"):
        dist.log_prob(torch.zeros(2, 5))


def test_log_prob_normalises_in_one_dimension():
    dist = tg.Gaussian(torch.tensor([0.3]), std=0.9)
    grid = torch.linspace(-8, 8, 20001, dtype=torch.float64)[:, None]
    dens = torch.exp(dist.log_prob(grid))
    assert float(torch.trapezoid(dens, grid[:, 0])) == pytest.approx(1.0, abs=1e-8)
    assert math.isfinite(float(dist.log_prob(grid).min()))
