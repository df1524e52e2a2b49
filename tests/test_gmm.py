"""The low-rank Gaussian mixtures behind the `is` proposals, against dense references."""

import math

import torch

from tailguard.estimators import _gmm

D, R, K = 7, 3, 4
F64 = torch.float64


def low_rank_group(seed: int) -> tuple[_gmm.Group, torch.Tensor]:
    """A group of K components in a random R-dim subspace of D dims, and its dense covariances."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(D, R, dtype=F64, generator=g))
    a = torch.randn(K, R, R, dtype=F64, generator=g)
    sub_cov = a @ a.transpose(1, 2) + 0.3 * torch.eye(R, dtype=F64)
    means = torch.randn(K, D, dtype=F64, generator=g)
    log_w = torch.log_softmax(torch.randn(K, dtype=F64, generator=g), 0)
    group = _gmm.Group(log_w, means, basis, torch.linalg.cholesky(sub_cov))
    dense = torch.eye(D, dtype=F64) + basis @ (sub_cov - torch.eye(R, dtype=F64)) @ basis.T
    return group, dense


def dense_log_prob(z, parts):
    """log sum_k w_k N(z; m_k, C_k) over (log_w, mean, cov) triples."""
    terms = [lw + torch.distributions.MultivariateNormal(m, c).log_prob(z) for lw, m, c in parts]
    return torch.logsumexp(torch.stack(terms), 0)


def blended_mixture():
    group, dense = low_rank_group(0)
    mix = _gmm.blend(_gmm.Mixture((group,)), [_gmm.standard_normal(D)], 0.3)
    triples = zip(group.log_weights, group.means, dense, strict=True)
    parts = [(lw + math.log(0.7), m, c) for lw, m, c in triples]
    parts.append((torch.tensor(math.log(0.3), dtype=F64), torch.zeros(D, dtype=F64), torch.eye(D, dtype=F64)))
    return mix, parts


def test_low_rank_density_matches_the_dense_covariance_formula():
    mix, parts = blended_mixture()
    z = 2.0 * torch.randn(50, D, dtype=F64, generator=torch.Generator().manual_seed(1))
    assert mix.n_components == K + 1
    assert torch.allclose(mix.log_prob(z), dense_log_prob(z, parts), atol=1e-10)


def test_samples_have_the_mixture_mean_and_covariance():
    mix, parts = blended_mixture()
    z = mix.sample(200_000, torch.Generator().manual_seed(2))
    w = torch.exp(torch.stack([lw for lw, _, _ in parts]))
    means = torch.stack([m for _, m, _ in parts])
    covs = torch.stack([c for _, _, c in parts])
    mean = w @ means
    second = (w[:, None, None] * (covs + means[:, :, None] * means[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None]
    assert torch.allclose(z.mean(0), mean, atol=0.03)
    assert torch.allclose(torch.cov(z.T), cov, atol=0.06)


def test_projected_fit_keeps_the_complement_standard_normal():
    """Elites shifted along one axis: the fit moves that axis and leaves the other D - 1 at N(0, 1)."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4000, D, dtype=F64, generator=g)
    z[:, 0] = 4.0 + 0.5 * z[:, 0]
    mix = _gmm.fit_projected(z, torch.zeros(4000, dtype=F64), max_components=2, elites_per_component=15,
                             shrink=1.0, max_dims=3, generator=g)
    draws = mix.sample(50_000, g)
    assert abs(float(draws[:, 0].mean()) - 4.0) < 0.1
    assert abs(float(draws[:, 0].std()) - 0.5) < 0.1
    assert torch.allclose(draws[:, 1:].std(0), torch.ones(D - 1, dtype=F64), atol=0.05)
