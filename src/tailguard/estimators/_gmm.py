"""Gaussian-mixture proposals for cross-entropy importance sampling, fitted by weighted EM.

Everything here lives in "base coordinates" z where each Gaussian piece of the input
distribution D has identity covariance (whitened coordinates for a Gaussian D, inputs
divided by the noise level for a noisy empirical D). That makes the identity the
natural prior for a component's covariance: shrinking towards it keeps the importance
weights' variance finite even when a component is fitted from few elite samples (a
covariance eigenvalue below 1/2 in a direction D does not care about makes
E_q[(p/q)^2] infinite).

Two fitting modes:
- ``fit_full``: k-means++ seeding on the elites, then weighted EM with full, shrunk
  covariances (a handful of components; used for Gaussian D).
- ``refit_isotropic``: warm-started EM steps on identity-covariance components, with the
  means pulled towards their previous values (used for a noisy empirical D, whose own
  components are the starting proposal, so its mixture structure is kept and shifted).

References: Rubinstein & Kroese, "The Cross-Entropy Method" (2004); Kurtz & Song,
"Cross-entropy-based adaptive importance sampling using Gaussian mixture" (Structural
Safety, 2013); Geyer et al., "Cross entropy-based importance sampling using Gaussian
densities revisited" (Structural Safety, 2019).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)
_ROWS = 8192  # rows per chunk when a (n, K) table of isotropic log-likelihoods is formed


@dataclass(frozen=True)
class Mixture:
    """sum_k exp(log_weights[k]) N(means[k], L_k L_k^T) over base coordinates (float64).

    log_weights (K,), means (K, d), scale_tril (K, d, d) or None for identity covariances.
    """

    log_weights: Tensor
    means: Tensor
    scale_tril: Tensor | None = None

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    def component_log_lik(self, z: Tensor) -> Tensor:
        """log N(z_i; mean_k, cov_k) for every row and component: (n, d) -> (n, K)."""
        d = z.shape[1]
        if self.scale_tril is None:
            parts = [
                -0.5 * torch.cdist(z[i : i + _ROWS], self.means) ** 2
                for i in range(0, z.shape[0], _ROWS)
            ]
            return torch.cat(parts) - 0.5 * d * _LOG_2PI
        diff = (z[None] - self.means[:, None]).transpose(1, 2)  # (K, d, n)
        u = torch.linalg.solve_triangular(self.scale_tril, diff, upper=False)
        log_det = torch.log(torch.diagonal(self.scale_tril, dim1=1, dim2=2)).sum(1)
        return (-0.5 * (u**2).sum(1) - log_det[:, None]).T - 0.5 * d * _LOG_2PI

    def log_prob(self, z: Tensor) -> Tensor:
        """Mixture log-density (n,), computed in row chunks so (n, K) never gets large."""
        out = [
            torch.logsumexp(self.component_log_lik(z[i : i + _ROWS]) + self.log_weights, dim=1)
            for i in range(0, z.shape[0], _ROWS)
        ]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n draws (n, d): component labels by multinomial, then Gaussian noise per component."""
        d = self.means.shape[1]
        labels = torch.multinomial(
            torch.exp(self.log_weights), n, replacement=True, generator=generator
        )
        eps = torch.randn(n, d, generator=generator, dtype=torch.float64)
        if self.scale_tril is None:
            return self.means[labels] + eps
        z = torch.empty(n, d, dtype=torch.float64)
        for k in range(self.n_components):
            rows = labels == k
            z[rows] = self.means[k] + eps[rows] @ self.scale_tril[k].T
        return z


def standard_normal(d: int) -> Mixture:
    """N(0, I) as a one-component mixture."""
    return Mixture(torch.zeros(1, dtype=torch.float64), torch.zeros(1, d, dtype=torch.float64))


def _normalise(log_w: Tensor) -> Tensor:
    return torch.exp(log_w - torch.logsumexp(log_w, 0))


def kish_ess(w: Tensor, dim: int = 0) -> Tensor:
    """(sum w)^2 / sum w^2 of non-negative weights along ``dim``."""
    return w.sum(dim) ** 2 / (w**2).sum(dim).clamp_min(1e-300)


def _seed_means(z: Tensor, w: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Weighted k-means++ seeding: (n, d) elites, (n,) weights -> (k, d) distinct starting means."""
    first = torch.multinomial(w, 1, generator=generator)
    centres = [z[first[0]]]
    dist2 = ((z - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        score = w * dist2
        if float(score.sum()) <= 0:
            break
        nxt = torch.multinomial(score, 1, generator=generator)[0]
        centres.append(z[nxt])
        dist2 = torch.minimum(dist2, ((z - z[nxt]) ** 2).sum(1))
    return torch.stack(centres)


def _responsibilities(mix: Mixture, z: Tensor) -> Tensor:
    """Posterior component probabilities (n, K)."""
    joint = mix.component_log_lik(z) + mix.log_weights
    return torch.exp(joint - torch.logsumexp(joint, dim=1, keepdim=True))


def _full_m_step(z: Tensor, wr: Tensor, shrink: float, min_ess: float = 2.0) -> Mixture:
    """Weighted M-step, covariances shrunk towards I by shrink*d/ESS_k; drops starved components.

    z (n, d) elites; wr (n, K) weight times responsibility.
    """
    d = z.shape[1]
    comp_ess = kish_ess(wr, dim=0)
    keep = comp_ess >= min_ess
    if not bool(keep.any()):
        keep = comp_ess == comp_ess.max()
    wr, comp_ess = wr[:, keep], comp_ess[keep]
    mass = wr.sum(0)
    means = (wr.T @ z) / mass[:, None]
    diff = z[:, None, :] - means[None]  # (n, K, d)
    covs = torch.einsum("nk,nkd,nke->kde", wr, diff, diff) / mass[:, None, None]
    beta = (shrink * d / comp_ess).clamp(max=1.0)[:, None, None]
    eye = torch.eye(d, dtype=torch.float64)
    covs = (1 - beta) * covs + beta * eye + 1e-9 * eye
    tril = torch.linalg.cholesky(0.5 * (covs + covs.transpose(1, 2)))
    return Mixture(torch.log(mass / mass.sum()), means, tril)


def fit_full(
    z: Tensor,
    log_w: Tensor,
    max_components: int,
    elites_per_component: int,
    shrink: float,
    generator: torch.Generator,
    iterations: int = 25,
) -> Mixture:
    """Weighted EM on elites z (n, d) with weights exp(log_w) (n,): a few full-covariance components.

    EM starts from min(max_components, n / elites_per_component) k-means++ seeds and drops
    any component whose weighted ESS falls under 2, so one failure region gets one or a
    few components and each of several regions gets its own. The seed count follows the
    number of elites, not their ESS: early levels often have degenerate weights, and
    too few components then would merge regions for good.
    """
    w = _normalise(log_w)
    k = int(max(1, min(max_components, z.shape[0] // elites_per_component)))
    d = z.shape[1]
    means = _seed_means(z, w, k, generator)
    k = means.shape[0]
    eye = torch.eye(d, dtype=torch.float64).expand(k, d, d).clone()
    mix = Mixture(torch.full((k,), -math.log(k), dtype=torch.float64), means, eye)
    for _ in range(iterations):
        mix = _full_m_step(z, w[:, None] * _responsibilities(mix, z), shrink)
    return mix


def refit_isotropic(
    z: Tensor, log_w: Tensor, previous: Mixture, prior_count: float, iterations: int = 3
) -> Mixture:
    """Warm-started EM on identity-covariance components; prunes components the elites left.

    Each mean moves to the weighted mean of its elites, pulled back towards its previous
    value with ``prior_count`` pseudo-observations (measured in effective samples), so a
    component seen in only a few elites does not jump by their noise (a mean that is off
    by r multiplies E[w^2] by about exp(r^2)).
    """
    w = _normalise(log_w)
    w = w * kish_ess(w)  # weights in effective-sample units
    mass = (w[:, None] * _responsibilities(previous, z)).sum(0)
    keep = mass >= 1e-3 * float(mass.max())
    prior = previous.means[keep]
    mix = Mixture(torch.log(mass[keep] / mass[keep].sum()), prior, None)
    for _ in range(iterations):
        wr = w[:, None] * _responsibilities(mix, z)
        mass = wr.sum(0)
        means = (wr.T @ z + prior_count * prior) / (mass + prior_count)[:, None]
        mix = Mixture(torch.log(mass / mass.sum()), means, None)
    return mix


def informed_basis(z: Tensor, log_w: Tensor, max_dims: int) -> Tensor:
    """Orthonormal (d, r) basis of the directions where the weighted elites differ from N(0, I).

    Those are the eigenvectors of the weighted second moment E_w[z z^T] whose eigenvalue
    is further from 1 than sampling noise allows (sqrt(d/ESS), the scale of the Marchenko-Pastur
    edge), plus the direction of the weighted mean. Every other direction keeps D's N(0, 1):
    that is both what the optimal proposal does there and what keeps the weights'
    variance from growing with d (Uribe et al., "Cross-entropy-based importance sampling
    with failure-informed dimension reduction", 2021).
    """
    d = z.shape[1]
    w = _normalise(log_w)
    n_eff = float(kish_ess(w))
    second = (w[:, None] * z).T @ z
    lam, vec = torch.linalg.eigh(0.5 * (second + second.T))
    gap = (lam - 1).abs()
    noise = math.sqrt(d / n_eff)
    order = torch.argsort(gap, descending=True)
    chosen = order[gap[order] > noise][:max_dims]
    basis = vec[:, chosen]
    mean = w @ z
    resid = mean - basis @ (basis.T @ mean)
    if float(resid.norm()) > 1e-9 and basis.shape[1] < d:
        basis = torch.cat([basis, (resid / resid.norm())[:, None]], dim=1)
    return basis


def fit_projected(
    z: Tensor,
    log_w: Tensor,
    max_components: int,
    elites_per_component: int,
    shrink: float,
    max_dims: int,
    generator: torch.Generator,
) -> Mixture:
    """A mixture fitted in the informed subspace and N(0, I) in its complement, lifted to d dims.

    Clustering in the few informed directions is what separates failure regions early:
    in the full space the d - r uninformative coordinates drown the distances.
    """
    d = z.shape[1]
    basis = informed_basis(z, log_w, max_dims)
    sub = fit_full(z @ basis, log_w, max_components, elites_per_component, shrink, generator)
    assert sub.scale_tril is not None
    cov_r = sub.scale_tril @ sub.scale_tril.transpose(1, 2)
    eye = torch.eye(d, dtype=torch.float64)
    covs = basis @ cov_r @ basis.T + (eye - basis @ basis.T)
    tril = torch.linalg.cholesky(0.5 * (covs + covs.transpose(1, 2)) + 1e-12 * eye)
    return Mixture(sub.log_weights, sub.means @ basis.T, tril)


def blend(main: Mixture, earlier: list[Mixture], share: float) -> Mixture:
    """(1 - share) main + share * (equal mixture of ``earlier``), as one mixture.

    CE proposals narrow level by level and can starve a failure region that carries
    little mass (a corner between two larger regions). The broader proposals of the
    earlier levels still cover it, so keeping a small share of them in the final
    proposal turns a silent underestimate into ordinary variance.
    """
    if not earlier or share <= 0.0:
        return main
    parts = [main, *earlier]
    shares = [math.log1p(-share)] + [math.log(share / len(earlier))] * len(earlier)
    d = main.means.shape[1]
    eye = torch.eye(d, dtype=torch.float64)

    def trils(m: Mixture) -> Tensor:
        if m.scale_tril is not None:
            return m.scale_tril
        return eye.expand(m.n_components, d, d)

    return Mixture(
        torch.cat([m.log_weights + s for m, s in zip(parts, shares, strict=True)]),
        torch.cat([m.means for m in parts]),
        torch.cat([trils(m) for m in parts]) if any(m.scale_tril is not None for m in parts)
        else None,
    )
