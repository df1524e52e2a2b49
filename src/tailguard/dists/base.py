"""The interface every input distribution D implements.

A distribution knows how to draw samples, evaluate its log-density, and make a
move that is reversible with respect to itself (what splitting's MCMC needs).
Gaussian-like distributions also describe themselves by their moments, which is
all the sampling-free ``moments`` estimator needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ShapeMismatchError, UnsupportedError


@dataclass(frozen=True)
class GaussianMixtureMoments:
    """D described as sum_k w_k N(mean_k, cov_k) over flattened inputs.

    log_weights: (K,)   means: (K, d)   covs: (K, d, d)
    A single Gaussian has K = 1. Tensors may carry gradients to D's parameters.
    """

    log_weights: Tensor
    means: Tensor
    covs: Tensor


class Distribution(ABC):
    """An input distribution over tensors of shape ``event_shape``."""

    event_shape: tuple[int, ...]

    @property
    def dim(self) -> int:
        """Number of scalar entries in one input."""
        n = 1
        for s in self.event_shape:
            n *= s
        return n

    @property
    def is_discrete(self) -> bool:
        return False

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Draw ``n`` independent inputs, shape (n, *event_shape)."""

    def rsample(self, n: int, generator: torch.Generator) -> Tensor:
        """Like ``sample`` but differentiable in D's parameters (reparameterised).

        Distributions without a reparameterisation return plain samples.
        """
        return self.sample(n, generator)

    @abstractmethod
    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density (or log-mass) of each input: (n, *event_shape) -> (n,)."""

    def moments(self) -> GaussianMixtureMoments:
        """Mean and covariance of each Gaussian component (for ``moments``)."""
        raise UnsupportedError(f"{type(self).__name__} does not describe itself by moments")

    def propose(self, x: Tensor, step: Tensor, generator: torch.Generator) -> Tensor:
        """A random move x -> x' whose kernel is reversible with respect to D.

        ``step`` (n,) in (0, 1] sets how far each chain moves. Accepting x' iff it
        stays in a level set {s >= L} then leaves D restricted to that set invariant.
        """
        raise UnsupportedError(f"{type(self).__name__} has no reversible MCMC move")

    @property
    def has_moves(self) -> bool:
        return type(self).propose is not Distribution.propose

    @property
    def has_moments(self) -> bool:
        return type(self).moments is not Distribution.moments

    def check_inputs(self, x: Tensor, name: str = "x") -> Tensor:
        """Raise ShapeMismatchError unless x has shape (n, *event_shape)."""
        if tuple(x.shape[1:]) != self.event_shape:
            raise ShapeMismatchError(
                f"{name} has shape {tuple(x.shape)}; {type(self).__name__} expects "
                f"(n, {', '.join(map(str, self.event_shape))})"
            )
        return x
