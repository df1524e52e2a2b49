"""Gaussian logit difference (GLD): extrapolate the score's tail from a Gaussian fit.

Wu & Hilton (2024), "Estimating the probabilities of rare outputs in language
models" (arXiv 2410.13211): fit a normal distribution to the margin "target logit
minus the largest other logit" over samples from D and report its mass above 0.
Here the margin is the spec's score, so the same idea applies to any graded spec.
It needs only samples, sees rare events no sample reached, and costs one forward
pass per draw; but it is a heuristic: the score's tail is rarely Gaussian, so the
CI (from the sampling error of the fitted mean and spread alone) says nothing about
that misfit and the estimate is flagged ``heuristic``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from scipy import stats
from torch import nn

from .._logspace import binomial_log_ci
from ..dists.base import Distribution
from ..oracle import ScoreOracle
from ..specs import Spec
from .base import Outcome, register


@register
@dataclass(frozen=True)
class GaussianLogitDifference:
    """P[score > 0] ~ Phi(mean / sd) of the scores of ``budget`` draws from D."""

    name: ClassVar[str] = "gld"

    def unsupported_reason(self, model: nn.Module, dist: Distribution, spec: Spec) -> str | None:
        if not spec.continuous:
            return "the spec is a black-box predicate; a Gaussian fit needs a graded score"
        return None

    def min_budget(self) -> int:
        return 100

    def run(self, oracle: ScoreOracle, budget: int, generator: torch.Generator, confidence: float) -> Outcome:
        s = oracle.scores(oracle.dist.sample(budget, generator))
        n = s.shape[0]
        mean, sd = float(s.mean()), float(s.std())
        diagnostics = {"score_mean": mean, "score_sd": sd, "draws": n, "hits": int((s > 0).sum())}
        if sd == 0.0:  # a constant score: the fit is a point mass, exact either way
            if mean > 0:
                return Outcome(0.0, (0.0, 0.0), diagnostics, heuristic=True)
            return Outcome(-math.inf, (-math.inf, binomial_log_ci(0, n, confidence)[1]), diagnostics,
                           heuristic=True)
        z_fit = mean / sd
        # delta method: var(mean/sd) = var(mean)/sd^2 + mean^2 var(sd)/sd^4, var(mean) = sd^2/n,
        # var(sd) ~ sd^2/(2n) for normal scores
        se = math.sqrt((1.0 + 0.5 * z_fit**2) / n)
        half = stats.norm.ppf(0.5 + confidence / 2) * se
        log_p = float(stats.norm.logcdf(z_fit))
        ci = (float(stats.norm.logcdf(z_fit - half)), float(stats.norm.logcdf(z_fit + half)))
        return Outcome(log_p, ci, diagnostics, warnings=("GLD assumes the score is Gaussian "
                                                          "in its tail; its CI ignores that assumption",),
                       heuristic=True)
