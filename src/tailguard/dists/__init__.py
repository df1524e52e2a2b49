"""Input distributions D."""

from .base import Distribution, GaussianMixtureMoments
from .empirical import NoisyEmpirical
from .gaussian import Gaussian
from .lm import LMDistribution
from .tokens import IndependentTokens

__all__ = ["Distribution", "Gaussian", "GaussianMixtureMoments", "IndependentTokens", "LMDistribution",
           "NoisyEmpirical"]
