"""Gaussian input distribution with scalar, per-dimension or full covariance."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InvalidArgumentError, ShapeMismatchError
from ._checks import as_float_tensor, positive
from .base import Distribution, GaussianMixtureMoments


class Gaussian(Distribution):
    """N(mean, cov) over tensors shaped like ``mean``.

    Give at most one of ``std`` (scalar or one per entry of ``mean``) or ``cov``
    (a (d, d) positive-definite matrix over the flattened input, d = mean.numel()).
    With neither, std = 1. Parameters may require grad: ``log_prob`` and
    ``moments`` then carry gradients to them.
    """

    def __init__(self, mean: Tensor, std: float | Tensor | None = None, cov: Tensor | None = None):
        self.mean = as_float_tensor(mean, "mean")
        if self.mean.dim() == 0:
            raise ShapeMismatchError("mean must have at least one dimension, got a scalar")
        self.event_shape = tuple(self.mean.shape)
        d = self.dim
        if std is not None and cov is not None:
            raise InvalidArgumentError("give std or cov, not both")
        self.std: Tensor | None = None
        self.cov: Tensor | None = None
        self._tril_cache: Tensor | None = None
        if cov is not None:
            c = as_float_tensor(cov, "cov")
            if c.shape != (d, d):
                raise ShapeMismatchError(f"cov has shape {tuple(c.shape)}; expected ({d}, {d})")
            cd = c.detach().double()
            if not torch.allclose(cd, cd.T, rtol=1e-8, atol=1e-10):
                raise InvalidArgumentError("cov must be symmetric")
            _, info = torch.linalg.cholesky_ex(cd)
            if info.item() != 0:
                raise InvalidArgumentError("cov must be positive definite")
            self.cov = c
        else:
            s = as_float_tensor(1.0 if std is None else std, "std")
            positive(s, "std")
            if s.dim() > 0 and s.numel() != d:
                raise ShapeMismatchError(
                    f"std has {s.numel()} entries; expected a scalar or {d} (one per entry of mean)"
                )
            self.std = s

    # --- parameters in float64 over the flattened input ------------------------------------
    def _mu(self) -> Tensor:
        return self.mean.reshape(-1).double()

    def _std_vec(self) -> Tensor:
        assert self.std is not None
        return self.std.double().reshape(-1).expand(self.dim)

    def scale_tril(self) -> Tensor:
        """Lower-triangular L with cov = L L^T, (d, d), float64.

        A fixed covariance (no autograd) is factorised once and reused, since MCMC
        moves and importance weights ask for L on every call.
        """
        if self.cov is None:
            return torch.diag(self._std_vec())
        if self.cov.requires_grad:
            return torch.linalg.cholesky(self.cov.double())
        if self._tril_cache is None:
            self._tril_cache = torch.linalg.cholesky(self.cov.double())
        return self._tril_cache

    def covariance(self) -> Tensor:
        if self.cov is not None:
            return self.cov.double()
        return torch.diag(self._std_vec() ** 2)

    # --- whitening: x = mean + L z, z ~ N(0, I) ---------------------------------------------
    def whiten(self, x: Tensor) -> Tensor:
        """(n, *event_shape) -> standard-normal coordinates (n, d)."""
        diff = x.reshape(x.shape[0], -1).double() - self._mu()
        if self.cov is not None:
            return torch.linalg.solve_triangular(self.scale_tril(), diff.T, upper=False).T
        return diff / self._std_vec()

    def unwhiten(self, z: Tensor) -> Tensor:
        """(n, d) standard-normal coordinates -> inputs (n, *event_shape)."""
        if self.cov is not None:
            x = self._mu() + z @ self.scale_tril().T
        else:
            x = self._mu() + z * self._std_vec()
        return x.reshape(z.shape[0], *self.event_shape)

    def _log_det_scale(self) -> Tensor:
        if self.cov is not None:
            return torch.log(torch.diagonal(self.scale_tril())).sum()
        return torch.log(self._std_vec()).sum()

    # --- Distribution interface -------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            return self.rsample(n, generator)

    def rsample(self, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.unwhiten(z)

    def log_prob(self, x: Tensor) -> Tensor:
        self.check_inputs(x)
        z = self.whiten(x)
        return -0.5 * (z**2).sum(1) - self._log_det_scale() - 0.5 * self.dim * math.log(2 * math.pi)

    def moments(self) -> GaussianMixtureMoments:
        return GaussianMixtureMoments(
            log_weights=torch.zeros(1, dtype=torch.float64),
            means=self._mu()[None],
            covs=self.covariance()[None],
        )

    def propose(self, x: Tensor, step: Tensor, generator: torch.Generator) -> Tensor:
        """Preconditioned Crank-Nicolson: x' = mu + sqrt(1-b^2)(x-mu) + b L xi (reversible)."""
        with torch.no_grad():
            z = self.whiten(x)
            b = step.double().reshape(-1, 1)
            xi = torch.randn(z.shape, generator=generator, dtype=torch.float64)
            return self.unwhiten(torch.sqrt(1 - b**2) * z + b * xi)

    def __repr__(self) -> str:
        kind = "full cov" if self.cov is not None else "std"
        return f"Gaussian(event_shape={self.event_shape}, {kind})"
