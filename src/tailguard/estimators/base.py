"""The estimator interface and its registry.

An estimator is a frozen dataclass of hyper-parameters (constructor) that is
handed the data at call time: a ScoreOracle bound to (model, D, spec), a budget
of model calls and a random generator. It returns an Outcome in natural-log
space; ``tailguard.estimate`` turns that into the public ``Estimate``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..dists.base import Distribution
from ..errors import InvalidArgumentError
from ..oracle import ScoreOracle
from ..specs import Spec


@dataclass(frozen=True)
class Outcome:
    """What an estimator found: natural-log estimate and CI plus diagnostics.

    ``trusted`` is False when a check of this run found the interval's assumption
    broken; ``assumes`` says in a sentence what the interval relies on.
    """

    log_p: float
    ci: tuple[float, float]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    heuristic: bool = False
    trusted: bool = True
    assumes: str = ""


@runtime_checkable
class Estimator(Protocol):
    name: ClassVar[str]

    def unsupported_reason(self, model: nn.Module, dist: Distribution, spec: Spec) -> str | None:
        """None if this estimator can handle the inputs, else a sentence saying why not."""

    def min_budget(self) -> int:
        """The fewest model calls with which a run means anything."""

    def run(
        self, oracle: ScoreOracle, budget: int, generator: torch.Generator, confidence: float
    ) -> Outcome:
        """Estimate P[score > 0] spending at most ``budget`` model calls."""


@runtime_checkable
class DifferentiableEstimator(Estimator, Protocol):
    def log_prob(
        self,
        model: nn.Module,
        dist: Distribution,
        spec: Spec,
        budget: int,
        generator: torch.Generator,
    ) -> Tensor:
        """A differentiable torch scalar approximating ln P[C]."""


_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make an estimator dataclass available by its ``name``."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass to be registered")
    _REGISTRY[cls.name] = cls  # type: ignore[attr-defined]
    return cls


def available() -> list[str]:
    """Registered estimator names, sorted."""
    return sorted(_REGISTRY)


def build(name: str, settings: dict[str, Any]) -> Estimator:
    """Construct estimator ``name`` from keyword settings, rejecting unknown names and keys."""
    if name not in _REGISTRY:
        raise InvalidArgumentError(
            f"unknown method {name!r}; choose one of {', '.join(['auto', *available()])}"
        )
    cls = _REGISTRY[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InvalidArgumentError(
            f"method {name!r} has no setting(s) {', '.join(unknown)}; "
            f"its settings are {', '.join(sorted(known)) or 'none'}"
        )
    return cls(**settings)  # type: ignore[no-any-return]


def settings_of(estimator: Estimator) -> dict[str, Any]:
    """The constructor arguments that rebuild ``estimator`` (for logs and JSON)."""
    return dataclasses.asdict(estimator)  # type: ignore[call-overload]
