"""tailguard: estimate, attack and harden the rarest catastrophic failures of neural networks."""

from . import estimators as _estimators  # noqa: F401  (registers the estimators)
from .attack import AttackResult, attack
from .dists import (
    Conditioned,
    Distribution,
    Gaussian,
    GaussianMixtureMoments,
    IndependentTokens,
    LMDistribution,
    NoisyEmpirical,
    Unnormalized,
)
from .errors import (
    BudgetError,
    ConfigError,
    InvalidArgumentError,
    MissingExtraError,
    ModelOutputError,
    ShapeMismatchError,
    TailguardError,
    TrainingDivergedError,
    UnsupportedError,
    WeightsError,
)
from .estimate import estimate, log_prob
from .estimators.base import available as available_methods
from .families import Family, FlowFamily, GaussianShift, PatchFamily, PerturbationBall
from .harden import HardenReport, HardenResult, harden
from .models import register_model
from .result import Estimate
from .scan import ScanReport, TriggerSearch, scan
from .specs import ClassIs, OutputAbove, Predicate, Spec

__version__ = "0.1.0"

__all__ = [
    "AttackResult",
    "Family",
    "FlowFamily",
    "GaussianShift",
    "PerturbationBall",
    "HardenReport",
    "HardenResult",
    "PatchFamily",
    "ScanReport",
    "TriggerSearch",
    "TrainingDivergedError",
    "attack",
    "harden",
    "BudgetError",
    "ClassIs",
    "ConfigError",
    "Distribution",
    "Estimate",
    "Gaussian",
    "GaussianMixtureMoments",
    "IndependentTokens",
    "LMDistribution",
    "InvalidArgumentError",
    "MissingExtraError",
    "ModelOutputError",
    "NoisyEmpirical",
    "Conditioned",
    "Unnormalized",
    "OutputAbove",
    "Predicate",
    "ShapeMismatchError",
    "Spec",
    "TailguardError",
    "UnsupportedError",
    "WeightsError",
    "available_methods",
    "estimate",
    "log_prob",
    "register_model",
    "scan",
]
