"""Input distributions D."""

from .base import Distribution, GaussianMixtureMoments
from .empirical import NoisyEmpirical
from .gaussian import Gaussian

__all__ = ["Distribution", "Gaussian", "GaussianMixtureMoments", "NoisyEmpirical"]
