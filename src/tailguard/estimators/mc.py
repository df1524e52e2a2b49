"""Plain Monte Carlo: sample D, count catastrophes, exact binomial CI.

The reference every other estimator is checked against wherever p is large
enough to sample (needs about 10/p draws to land within a factor 2). With zero
hits it reports log p = -inf and the Clopper-Pearson upper bound (about 3/N at 95 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .._logspace import binomial_log_ci
from ..backends.active import shares
from ..dists.base import Distribution
from ..errors import InvalidArgumentError
from ..oracle import ScoreOracle
from ..specs import Spec
from .base import Outcome, register


@register
@dataclass(frozen=True)
class MonteCarlo:
    """Plain sampling in batches of ``batch_size`` draws."""

    name: ClassVar[str] = "mc"
    batch_size: int = 65_536

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be >= 1, got {self.batch_size}")

    def unsupported_reason(self, model: nn.Module, dist: Distribution, spec: Spec) -> str | None:
        return None

    def min_budget(self) -> int:
        return 1

    def run(
        self, oracle: ScoreOracle, budget: int, generator: torch.Generator, confidence: float
    ) -> Outcome:
        # each worker draws and scores its share and sends back a count (here: one share, all of it)
        hits = oracle.spread(lambda k: [HitCount(n, self.batch_size) for n in shares(budget, k)], generator)
        return counts_outcome(sum(hits), budget, confidence)


@dataclass(frozen=True)
class HitCount:
    """Catastrophes among ``draws`` draws of D, drawn and scored in batches wherever the model is."""

    draws: int
    batch_size: int

    def __call__(self, oracle: ScoreOracle, generator: torch.Generator) -> int:
        hits = 0
        drawn = 0
        while drawn < self.draws:
            n = min(self.batch_size, self.draws - drawn)
            x = oracle.dist.sample(n, generator)
            hits += int((oracle.scores(x) > 0).sum())
            drawn += n
        return hits


def counts_outcome(hits: int, draws: int, confidence: float) -> Outcome:
    """The plain-sampling estimate and exact CI from ``hits`` catastrophes in ``draws`` draws."""
    log_p = math.log(hits / draws) if hits else -math.inf
    warnings = () if hits else (f"no catastrophe in {draws:,} draws: only an upper bound",)
    return Outcome(
        log_p=log_p,
        ci=binomial_log_ci(hits, draws, confidence),
        diagnostics={"hits": hits, "draws": draws, "zero_hits": hits == 0},
        warnings=warnings,
    )
