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
from dataclasses import dataclass, replace
from functools import cached_property

import torch
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)
_ROWS = 8192  # rows per chunk, so that (rows, K, r) tables stay small


@dataclass(frozen=True)
class Group:
    """Components sharing one subspace: N(means[k], I + B (S_k - I) B^T) over base coordinates.

    log_weights (K,) (their share of the whole mixture), means (K, d), basis B (d, r) with
    orthonormal columns (r may be 0: identity covariances), sub_tril (K, r, r) the Cholesky
    factors of the covariances S_k inside span(B). Outside span(B) every component is N(., I).
    Cross-entropy fits only ever move a proposal inside a low-dimensional subspace, so a
    density costs O(n d r) per group instead of the O(n d^2) per component of a full covariance.
    """

    log_weights: Tensor
    means: Tensor
    basis: Tensor
    sub_tril: Tensor

    @staticmethod
    def isotropic(log_weights: Tensor, means: Tensor) -> Group:
        """Identity-covariance components (r = 0)."""
        k, d = means.shape
        empty = torch.zeros(d, 0, dtype=torch.float64)
        return Group(log_weights, means, empty, torch.zeros(k, 0, 0, dtype=torch.float64))

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    # The Mahalanobis distance of z to component k is |z - m|^2 + u^T (S^-1 - I) u with
    # u = B^T (z - m) = y - B^T m, y = B^T z. Expanded, it is |z|^2 - 2 z.a_k + c_k + y^T (S^-1 - I) y:
    # the terms linear in z fold into one matrix product over all components of the mixture,
    # and only y^T (S^-1 - I) y, an O(n r^2) term, stays per group.

    def folded_linear_terms(self) -> tuple[Tensor, Tensor]:
        """(a (K, d), c (K,)) with a_k = m_k + B (S_k^-1 - I) B^T m_k, c_k = |m_k|^2 + u_k terms."""
        if self.basis.shape[1] == 0:
            return self.means, (self.means**2).sum(1)
        mb = self.means @ self.basis  # (K, r)
        inv = self._inverse_tril
        excess = inv.transpose(1, 2) @ inv - torch.eye(mb.shape[1], dtype=torch.float64)
        q_mb = (excess @ mb[:, :, None]).squeeze(2)
        return self.means + q_mb @ self.basis.T, (self.means**2).sum(1) + (mb * q_mb).sum(1)

    def subspace_quadratic(self, z: Tensor) -> Tensor:
        """y^T (S_k^-1 - I) y = |L_k^-1 y|^2 - |y|^2 for y = B^T z: (n, d) -> (n, K)."""
        n, r = z.shape[0], self.basis.shape[1]
        if r == 0:
            return torch.zeros(n, self.n_components, dtype=torch.float64)
        y = z @ self.basis
        white = (y @ self._inverse_tril.permute(2, 0, 1).reshape(r, -1)).view(n, -1, r)
        return (white**2).sum(2) - (y**2).sum(1, keepdim=True)

    @cached_property
    def _inverse_tril(self) -> Tensor:
        """L_k^-1 (K, r, r): small and well conditioned, as fits are shrunk towards I."""
        eye = torch.eye(self.basis.shape[1], dtype=torch.float64).expand_as(self.sub_tril)
        return torch.linalg.solve_triangular(self.sub_tril, eye, upper=False)

    def half_log_det(self) -> Tensor:
        """Half the log-determinant of each covariance, sum log diag L_k (K,)."""
        return torch.log(torch.diagonal(self.sub_tril, dim1=1, dim2=2)).sum(1)

    def draw(self, k: int, eps: Tensor) -> Tensor:
        """Component k's draws from standard normal noise eps (m, d)."""
        if self.basis.shape[1] == 0:
            return self.means[k] + eps
        inside = eps @ self.basis  # (m, r)
        moved = inside @ self.sub_tril[k].T - inside
        return self.means[k] + eps + moved @ self.basis.T


@dataclass(frozen=True)
class Mixture:
    """A Gaussian mixture over base coordinates (float64), as groups of low-rank components."""

    groups: tuple[Group, ...]

    @property
    def n_components(self) -> int:
        return sum(g.n_components for g in self.groups)

    @property
    def log_weights(self) -> Tensor:
        return torch.cat([g.log_weights for g in self.groups])

    @property
    def means(self) -> Tensor:
        return torch.cat([g.means for g in self.groups])

    def component_log_lik(self, z: Tensor) -> Tensor:
        """log N(z_i; mean_k, cov_k) for every row and component: (n, d) -> (n, K)."""
        slope, offset = self._folded
        quad = torch.addmm(offset + (z**2).sum(1, keepdim=True), z, slope.T, alpha=-2.0)
        if self._has_subspaces:
            quad = quad + torch.cat([g.subspace_quadratic(z) for g in self.groups], dim=1)
        return -0.5 * quad.clamp_min(0.0) - self._log_norm

    @cached_property
    def _folded(self) -> tuple[Tensor, Tensor]:
        parts = [g.folded_linear_terms() for g in self.groups]
        return torch.cat([a for a, _ in parts]), torch.cat([c for _, c in parts])

    @cached_property
    def _has_subspaces(self) -> bool:
        return any(g.basis.shape[1] > 0 for g in self.groups)

    @cached_property
    def _log_norm(self) -> Tensor:
        """log of each component's normalising constant (K,)."""
        d = self.groups[0].means.shape[1]
        return torch.cat([g.half_log_det() for g in self.groups]) + 0.5 * d * _LOG_2PI

    def log_prob(self, z: Tensor) -> Tensor:
        """Mixture log-density (n,), computed in row chunks so (n, K) never gets large."""
        log_w = self.log_weights
        out = [
            torch.logsumexp(self.component_log_lik(z[i : i + _ROWS]) + log_w, dim=1)
            for i in range(0, z.shape[0], _ROWS)
        ]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n draws (n, d): component labels by multinomial, then Gaussian noise per component."""
        d = self.groups[0].means.shape[1]
        labels = torch.multinomial(torch.exp(self.log_weights), n, replacement=True, generator=generator)
        eps = torch.randn(n, d, generator=generator, dtype=torch.float64)
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=self.n_components).tolist()
        chunks = iter(torch.split(eps[order], counts))
        drawn = [g.draw(k, next(chunks)) for g in self.groups for k in range(g.n_components)]
        z = torch.empty(n, d, dtype=torch.float64)
        z[order] = torch.cat(drawn)
        return z


def standard_normal(d: int) -> Mixture:
    """N(0, I) as a one-component mixture."""
    return isotropic(torch.zeros(1, dtype=torch.float64), torch.zeros(1, d, dtype=torch.float64))


def isotropic(log_weights: Tensor, means: Tensor) -> Mixture:
    """sum_k w_k N(means[k], I): log_weights (K,), means (K, d)."""
    return Mixture((Group.isotropic(log_weights, means),))


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
    return _full_covariance(torch.log(mass / mass.sum()), means, tril)


def _full_covariance(log_weights: Tensor, means: Tensor, tril: Tensor) -> Mixture:
    """Components with full covariances L_k L_k^T: one group whose subspace is everything."""
    d = means.shape[1]
    return Mixture((Group(log_weights, means, torch.eye(d, dtype=torch.float64), tril),))


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
    mix = _full_covariance(torch.full((k,), -math.log(k), dtype=torch.float64), means, eye)
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
    mix = isotropic(torch.log(mass[keep] / mass[keep].sum()), prior)
    for _ in range(iterations):
        wr = w[:, None] * _responsibilities(mix, z)
        mass = wr.sum(0)
        means = (wr.T @ z + prior_count * prior) / (mass + prior_count)[:, None]
        mix = isotropic(torch.log(mass / mass.sum()), means)
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
    basis = informed_basis(z, log_w, max_dims)
    if basis.shape[1] == 0:
        return standard_normal(z.shape[1])
    (sub,) = fit_full(z @ basis, log_w, max_components, elites_per_component, shrink, generator).groups
    return Mixture((Group(sub.log_weights, sub.means @ basis.T, basis, sub.sub_tril),))


def blend(main: Mixture, earlier: list[Mixture], share: float) -> Mixture:
    """(1 - share) main + share * (equal mixture of ``earlier``), as one mixture.

    CE proposals narrow level by level and can starve a failure region that carries
    little mass (a corner between two larger regions). The broader proposals of the
    earlier levels still cover it, so keeping a small share of them in the final
    proposal turns a silent underestimate into ordinary variance.
    """
    if not earlier or share <= 0.0:
        return main
    shifts = [math.log1p(-share)] + [math.log(share / len(earlier))] * len(earlier)
    return Mixture(tuple(
        replace(g, log_weights=g.log_weights + shift)
        for part, shift in zip([main, *earlier], shifts, strict=True)
        for g in part.groups
    ))
