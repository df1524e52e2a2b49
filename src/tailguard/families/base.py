"""Families of plausible input distributions that the adversary searches.

A family maps parameters theta (a dict of tensors) to a distribution D_theta.
Continuous parameters are optimised by gradient through ``member(theta).rsample``;
discrete ones (a patch's position) are chosen among ``candidates``. Plausibility
is either a hard constraint enforced by ``project`` or a penalty, and the family
states it in words for the report.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from ..dists.base import Distribution

Params = dict[str, Tensor]


class Family(ABC):
    """A set of input distributions {D_theta} over inputs of shape ``event_shape``."""

    event_shape: tuple[int, ...]

    @abstractmethod
    def candidates(self, n: int, generator: torch.Generator) -> list[Params]:
        """``n`` diverse starting parameters (leaf tensors; continuous ones require grad)."""

    @abstractmethod
    def member(self, params: Params) -> Distribution:
        """The distribution D_theta, differentiable in the continuous parameters."""

    def project(self, params: Params) -> None:
        """Enforce the plausibility constraint in place (called after each optimiser step)."""

    def penalty(self, params: Params) -> Tensor:
        """A soft plausibility penalty subtracted from the attack objective (ln-prob units)."""
        return torch.zeros((), dtype=torch.float64)

    @abstractmethod
    def constraint(self) -> str:
        """One sentence stating what makes a member plausible, for reports."""

    def describe(self, params: Params) -> dict[str, object]:
        """A JSON-friendly summary of a member's parameters."""
        return {k: v.detach().tolist() for k, v in params.items()}


def detach_params(params: Params) -> Params:
    """A copy of the parameters with no autograd history (what results and checkpoints keep)."""
    return {k: v.detach().clone() for k, v in params.items()}
