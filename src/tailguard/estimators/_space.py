"""Base coordinates for Gaussian-like D, shared by importance sampling and the failure-mode search.

In base coordinates z every Gaussian piece of D is N(centre, I): whitened coordinates
for a Gaussian D (one centre, the origin), inputs divided by the noise level for a
noisy empirical D (one centre per data point). Distances there are in units of D's own
spread, which is what makes "the most probable catastrophic input" a nearest-point
problem and lets proposals be shrunk towards the identity.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..dists.base import Distribution
from ..dists.empirical import NoisyEmpirical
from ..dists.gaussian import Gaussian
from ..dists.unnormalized import Unnormalized
from . import _gmm


def supports(dist: Distribution) -> bool:
    """Whether D has base coordinates (a Gaussian, a noisy empirical D, or an unnormalised density)."""
    return isinstance(dist, Gaussian | NoisyEmpirical | Unnormalized)


class BaseSpace:
    """The map z -> x for D and D's log-density in z. ``log_jac`` = log |dz/dx| (a constant).

    An unnormalised D takes the whitened coordinates of its Gaussian reference, and its
    log-density there uses the estimated normaliser, whose relative standard error
    ``normaliser_rel_se`` an interval built on these coordinates must carry (0 otherwise;
    infinite when the normaliser's own weights are too heavy-tailed to trust, which
    leaves no interval).
    """

    def __init__(self, dist: Distribution):
        if not supports(dist):
            raise TypeError(f"{type(dist).__name__} has no base coordinates")
        self.dist = dist
        # a normaliser whose weights failed their Pareto-k check has no usable error: infinite
        self.normaliser_rel_se = (0.0 if not isinstance(dist, Unnormalized)
                                  else dist.normaliser.rel_se if dist.normaliser.trusted else math.inf)
        with torch.no_grad():
            if isinstance(dist, Gaussian | Unnormalized):
                gaussian = dist if isinstance(dist, Gaussian) else dist.reference
                self.tril = gaussian.scale_tril().detach()
                self.mean = gaussian.mean.detach().reshape(-1).double()
                self.log_jac = -float(torch.log(torch.diagonal(self.tril)).sum())
            else:
                assert isinstance(dist, NoisyEmpirical)
                self.sigma = float(dist.noise_std.detach())
                self.log_jac = -dist.dim * math.log(self.sigma)

    @property
    def is_mixture(self) -> bool:
        return isinstance(self.dist, NoisyEmpirical)

    def centres(self) -> Tensor:
        """The centres of D's Gaussian pieces in base coordinates (K, d)."""
        if isinstance(self.dist, NoisyEmpirical):
            return self.dist.points.detach().reshape(self.dist.n_components, -1).double() / self.sigma
        return torch.zeros(1, self.dist.dim, dtype=torch.float64)

    def initial(self) -> _gmm.Mixture:
        """D itself as a mixture in base coordinates."""
        centres = self.centres()
        n = centres.shape[0]
        return _gmm.isotropic(torch.full((n,), -math.log(n), dtype=torch.float64), centres)

    def to_x(self, z: Tensor) -> Tensor:
        """(n, d) base coordinates -> inputs (n, *event_shape); differentiable in z."""
        if not self.is_mixture:
            x = self.mean + z @ self.tril.T
        else:
            x = z * self.sigma
        return x.reshape(z.shape[0], *self.dist.event_shape)

    def to_z(self, x: Tensor) -> Tensor:
        """Inputs (n, *event_shape) -> base coordinates (n, d): the inverse of ``to_x``."""
        flat = x.reshape(x.shape[0], -1).double()
        if self.is_mixture:
            return flat / self.sigma
        return torch.linalg.solve_triangular(self.tril, (flat - self.mean).T, upper=False).T

    def base_log_prob(self, z: Tensor) -> Tensor:
        """log density of D in base coordinates (n,), without gradients."""
        with torch.no_grad():
            if isinstance(self.dist, Gaussian):
                return -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
            return self.dist.log_prob(self.to_x(z)) - self.log_jac
