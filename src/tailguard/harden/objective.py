"""What the defender descends: smooth surrogates of ln P[C], floored, weighted against the task loss.

The surrogate of ln P_D[C] is the log of the mean of exp(spec.soft) over
reparameterised draws from D (``surrogate_log_prob``): differentiable in the
model, and in D's parameters where D can be reparameterised, so the same value
serves the adversary (ascent in D) and the defender (descent in the model). A
family member adds its plausibility penalty (``member_log_prob``).

The defender's loss is

    task loss + lam * sum_terms weight * mean_members max(ln P_hat, floor)

(``Objective.loss``). A floor stops the model from buying ever larger margins
once a failure is negligible: below it the term has no gradient. The floors
are settings of the run, not limits on safety: a floor of ln 1e-6 on the
adversary keeps pushing until the family's worst member is far below 1e-3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._logspace import logmeanexp
from ..dists.base import Distribution
from ..errors import InvalidArgumentError
from ..families.base import Family, Params
from ..oracle import ScoreOracle


def surrogate_log_prob(
    oracle: ScoreOracle, dist: Distribution, n: int, temperature: float, generator: torch.Generator
) -> Tensor:
    """ln mean exp(spec.soft) over n reparameterised draws from ``dist``: a float64 scalar."""
    x = dist.rsample(n, generator)
    log_soft = oracle.spec.soft(x, oracle.outputs(x, dist), temperature).double()
    return logmeanexp(log_soft)


def member_log_prob(
    oracle: ScoreOracle,
    family: Family,
    params: Params,
    n: int,
    temperature: float,
    generator: torch.Generator,
) -> Tensor:
    """The surrogate on family member ``params``, minus the family's plausibility penalty."""
    return surrogate_log_prob(oracle, family.member(params), n, temperature, generator) - family.penalty(
        params
    )


@dataclass(frozen=True)
class Term:
    """One risk term of the loss: ln P_hat per member (k,), its floor (natural log) and weight."""

    log_probs: Tensor
    floor: float
    weight: float

    def value(self) -> Tensor:
        """weight * mean of the floored log-probabilities."""
        return self.weight * self.log_probs.clamp(min=self.floor).mean()


@dataclass(frozen=True)
class Objective:
    """task + lam * sum of the floored, weighted risk terms; ``lam`` > 0."""

    lam: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.lam, bool) or not isinstance(self.lam, int | float) or not 0 < self.lam < math.inf:
            raise InvalidArgumentError(f"lam must be a finite number > 0, got {self.lam!r}")

    def loss(self, task: Tensor, terms: list[Term]) -> Tensor:
        risk = sum((t.value() for t in terms), torch.zeros((), dtype=torch.float64))
        return task + self.lam * risk
