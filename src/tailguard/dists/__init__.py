"""Input distributions D."""

from .base import Distribution, GaussianMixtureMoments
from .conditioned import Conditioned
from .empirical import NoisyEmpirical
from .gaussian import Gaussian
from .lm import LMDistribution
from .tokens import IndependentTokens
from .unnormalized import Unnormalized

__all__ = ["Conditioned", "Distribution", "Gaussian", "GaussianMixtureMoments", "IndependentTokens",
           "LMDistribution", "NoisyEmpirical", "Unnormalized"]
