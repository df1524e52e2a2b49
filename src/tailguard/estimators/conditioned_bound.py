"""An upper bound on P[C | R] when no catastrophe was seen in R.

Splitting on base given R that never reaches C gives no upper end (its bound holds
only as far as the chains mixed), and the ratio's P_base[C and R] / P_base[R] has
none either when P_base[R] is far below 1 / budget. This bound comes from N
independent draws z of a proposal q in base coordinates: half a Gaussian fitted to
base given R (``fitted_proposal``), half a Gaussian of base's own spread at the same
centre. With w = p_base / q, W the largest w among the draws in R, and none of those
draws in C:

- P_base[C and R] = E_q[w 1_{C and R}] <= W Q[C and R] <= W u, where u is the exact
  one-sided binomial upper bound on Q[C and R] from 0 hits in N draws (level 1 - alpha/2);
- P_base[R] = W E_q[Y] with Y = w 1_R / W in [0, 1], and E_q[Y] >= l, the empirical
  Bernstein lower bound (Maurer & Pontil 2009, "Empirical Bernstein bounds and sample
  variance penalization", Theorem 4) on the mean of Y (level 1 - alpha/2);

so P[C | R] <= u / l at level 1 - alpha (Bonferroni over the two), with W cancelled.
Both steps are exact for independent draws; what the bound assumes is that w <= W on
all of C and R, i.e. that no part of R has heavier weights than the draws in R show.
The base-shaped half of q makes w fall off in every direction away from base's centre
(for a Gaussian base w <= 2 exp(|m|^2 / 2 - m.z), m the centre), so the largest
weights lie on R's side nearest base's centre, where the draws concentrate; a weight
tail that looks heavy (Pareto k above MAX_PARETO_K) refuses the bound instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._logspace import LN10, binomial_log_ci, pareto_k
from ..dists.conditioned import Conditioned
from ..dists.gaussian import Gaussian
from ..oracle import ScoreOracle
from ..specs import Spec
from ._space import BaseSpace

#: the share of the proposal with base's own spread (the rest: the Gaussian fitted to base given R)
WIDE_SHARE = 0.5
#: the weights of the draws in R must look light-tailed (a finite variance) for W to stand for their supremum
MAX_PARETO_K = 0.5
#: draws of the proposal per recogniser batch, and the most recogniser calls per model call
BATCH = 65_536
MAX_DRAWS_PER_CALL = 50


@dataclass(frozen=True)
class ZeroHitBound:
    """What the draws showed: catastrophes in R, and the bound (log10 upper end) when there were none."""

    hits: int
    draws: int
    recognised: int
    log10_high: float | None
    pareto_k: float
    reason: str

    @property
    def model_calls(self) -> int:
        return self.recognised

    def assumes(self) -> str:
        return (f"no input of C and R has a weight p_base/q above the largest of the {self.recognised:,} "
                f"recognised draws (their Pareto k {self.pareto_k:.2f}); exact binomial and empirical "
                "Bernstein bounds at half the error rate each (Bonferroni)")

    def diagnostics(self) -> dict[str, Any]:
        return {"hits": self.hits, "draws": self.draws, "recognised": self.recognised,
                "log10_high": self.log10_high, "pareto_k": self.pareto_k, "reason": self.reason}


def zero_hit_bound(model: nn.Module, dist: Conditioned, spec: Spec, space: BaseSpace, fitted: Gaussian,
                   budget: int, generator: torch.Generator, confidence: float) -> ZeroHitBound:
    """Draw q until ``budget`` draws fell in R (one model call each) or the cap on draws; bound P[C | R]."""
    oracle = ScoreOracle(model, dist.base, spec)
    wide = Gaussian(fitted.mean, std=1.0)
    hits, draws, recognised, inside_log_w = 0, 0, 0, []
    while recognised < budget and draws < MAX_DRAWS_PER_CALL * budget:
        with torch.no_grad():
            pick = torch.rand(BATCH, generator=generator) < WIDE_SHARE
            z = torch.where(pick[:, None], wide.sample(BATCH, generator), fitted.sample(BATCH, generator))
            log_q = torch.logaddexp(fitted.log_prob(z) + math.log1p(-WIDE_SHARE),
                                    wide.log_prob(z) + math.log(WIDE_SHARE))
            x = space.to_x(z)
            inside = dist.recognise(x) > 0
        n_in = int(inside.sum())
        kept = min(n_in, budget - recognised)
        hits += int((oracle.scores(x[inside][:kept]) > 0).sum())
        # a batch cut short counts its draws up to the last recognised one kept: N stays a run of whole draws
        draws += int(torch.nonzero(inside).flatten()[kept - 1]) + 1 if kept < n_in else BATCH
        inside_log_w.append((space.base_log_prob(z) - log_q)[inside][:kept])
        recognised += kept
    log_w = torch.cat(inside_log_w)
    k = pareto_k(log_w) if log_w.numel() >= 100 else math.nan
    if hits:
        return ZeroHitBound(hits, draws, recognised, None, k,
                            f"{hits} of the recognised draws are catastrophic")
    if not k <= MAX_PARETO_K:  # nan (too few draws to fit the tail) refuses too
        return ZeroHitBound(0, draws, recognised, None, k,
                            f"the weights in R look heavy-tailed (Pareto k {k:.2f} > {MAX_PARETO_K}) or too "
                            f"few draws ({recognised}) fell in R: their largest need not be the supremum")
    lower = bernstein_lower_mean(torch.exp(log_w - log_w.max()), draws, 1.0 - (1.0 - confidence) / 2.0)
    if lower <= 0.0:
        return ZeroHitBound(0, draws, recognised, None, k, "too few draws in R to bound P_base[R] from below")
    log_u = binomial_log_ci(0, draws, confidence)[1]  # its upper end is one-sided at 1 - alpha/2
    high = min(log_u - math.log(lower), 0.0) / LN10
    return ZeroHitBound(0, draws, recognised, high, k, "no catastrophe in R")


def bernstein_lower_mean(y: torch.Tensor, n: int, confidence: float) -> float:
    """A lower confidence bound on E[Y] for Y in [0, 1] from n draws: ``y`` holds the nonzero ones.

    Maurer & Pontil (2009), Theorem 4: with probability >= 1 - delta,
    E[Y] >= mean - sqrt(2 V ln(2 / delta) / n) - 7 ln(2 / delta) / (3 (n - 1)), V the sample variance.
    """
    if n < 2:
        return 0.0
    y = y.double()
    mean = float(y.sum()) / n
    variance = max((float((y**2).sum()) - n * mean * mean) / (n - 1), 0.0)
    log_term = math.log(2.0 / (1.0 - confidence))
    return mean - math.sqrt(2.0 * variance * log_term / n) - 7.0 * log_term / (3.0 * (n - 1))
