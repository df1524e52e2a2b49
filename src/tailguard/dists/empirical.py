"""A mixture of isotropic Gaussians centred on data points ("data plus noise")."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InvalidArgumentError, ShapeMismatchError
from ._checks import as_float_tensor, positive
from .base import Distribution, GaussianMixtureMoments


class NoisyEmpirical(Distribution):
    """(1/N) sum_i N(points[i], noise_std^2 I): a data set with Gaussian noise added.

    ``points`` has shape (N, *event_shape). This is the natural deployment
    distribution for a classifier: real inputs, slightly perturbed.
    """

    def __init__(self, points: Tensor, noise_std: float | Tensor):
        self.points = as_float_tensor(points, "points")
        if self.points.dim() < 2 or self.points.shape[0] == 0:
            raise ShapeMismatchError(
                f"points must have shape (N, *event_shape) with N >= 1, got {tuple(self.points.shape)}"
            )
        self.noise_std = positive(as_float_tensor(noise_std, "noise_std"), "noise_std")
        if self.noise_std.numel() != 1:
            raise InvalidArgumentError("noise_std must be a scalar")
        self.event_shape = tuple(self.points.shape[1:])

    @property
    def n_components(self) -> int:
        return self.points.shape[0]

    def _centres(self) -> Tensor:
        return self.points.reshape(self.n_components, -1).double()

    def _sigma(self) -> Tensor:
        return self.noise_std.double().reshape(())

    def component_log_lik(self, x: Tensor) -> Tensor:
        """log N(x; c_k, s^2 I) for every input and component: (n, N)."""
        flat = x.reshape(x.shape[0], -1).double()
        s = self._sigma()
        sq = torch.cdist(flat, self._centres()) ** 2
        return -0.5 * sq / s**2 - self.dim * torch.log(s) - 0.5 * self.dim * math.log(2 * math.pi)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            return self.rsample(n, generator)

    def rsample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.randint(self.n_components, (n,), generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self._centres()[k] + self._sigma() * noise
        return x.reshape(n, *self.event_shape)

    def log_prob(self, x: Tensor) -> Tensor:
        self.check_inputs(x)
        return torch.logsumexp(self.component_log_lik(x), dim=1) - math.log(self.n_components)

    def moments(self) -> GaussianMixtureMoments:
        n, d = self.n_components, self.dim
        eye = torch.eye(d, dtype=torch.float64)
        return GaussianMixtureMoments(
            log_weights=torch.full((n,), -math.log(n), dtype=torch.float64),
            means=self._centres(),
            covs=(self._sigma() ** 2 * eye).expand(n, d, d),
        )

    def propose(self, x: Tensor, step: Tensor, generator: torch.Generator) -> Tensor:
        """Gibbs-resample the component given x, then a pCN move within it.

        Both halves are reversible with respect to the mixture, so the composite is too.
        """
        with torch.no_grad():
            logits = self.component_log_lik(x)
            u = torch.rand(logits.shape, generator=generator, dtype=torch.float64)
            k = torch.argmax(logits - torch.log(-torch.log(u)), dim=1)  # Gumbel-max
            c = self._centres()[k]
            b = step.double().reshape(-1, 1)
            xi = torch.randn(c.shape, generator=generator, dtype=torch.float64)
            flat = x.reshape(x.shape[0], -1).double()
            moved = c + torch.sqrt(1 - b**2) * (flat - c) + b * self._sigma() * xi
        return moved.reshape(x.shape)

    def __repr__(self) -> str:
        return f"NoisyEmpirical(N={self.n_components}, event_shape={self.event_shape})"
