"""The Gumbel-tail forecast of Jones et al. (2025), a baseline beside tailguard's estimates.

Jones, Tong, Mu, ... Sharma (2025), "Forecasting rare language model behaviors"
(arXiv 2502.16797): measure each of m evaluation queries' elicitation probability
p (the chance that the model's reply to it shows the behaviour), and forecast the
worst query among n >> m deployment queries. Their Gumbel-tail method takes the
scores psi = -log(-log p); under a Gumbel-type tail, the largest of n queries'
psi grows linearly in log n, so the k largest observed scores, the i-th largest
standing for the top i / m quantile (the worst of m / i queries), are fitted by a
line psi = a log(m / i) + b and read off at log n.

``forecast_worst_query_risk`` is that forecast. ``forecast_log_p`` turns it into a
probability of catastrophe for a spec whose catastrophe is "elicitation probability
above ``threshold``": the n at which the forecast worst query crosses the threshold
is about 1 / P[C], so log P[C] ~ -log n*. Nothing here has an interval: the
forecast is an extrapolation, and the benchmarks show how far it lands from the truth.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InvalidArgumentError

#: elicitation probabilities are clipped into [TINY, 1 - TINY] before -log(-log p)
TINY = 1e-300


def gumbel_scores(p: Tensor) -> Tensor:
    """psi = -log(-log p) (m,), float64, of elicitation probabilities p (m,) in [0, 1]."""
    q = p.double().clamp(TINY, 1.0 - 1e-16)
    return -torch.log(-torch.log(q))


def fit_tail(p: Tensor, top_k: int = 10) -> tuple[float, float]:
    """(a, b) of the least-squares line psi_(i) = a log(m / i) + b over the top_k largest scores."""
    if not isinstance(p, Tensor) or p.dim() != 1:
        raise InvalidArgumentError("elicitation probabilities must be a 1-D tensor (m,)")
    if torch.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise InvalidArgumentError("elicitation probabilities must lie in [0, 1]")
    m = p.numel()
    if not isinstance(top_k, int) or top_k < 2 or top_k > m:
        raise InvalidArgumentError(f"top_k must be an int in [2, m = {m}], got {top_k!r}")
    psi = torch.sort(gumbel_scores(p), descending=True).values[:top_k]
    x = torch.log(m / torch.arange(1, top_k + 1, dtype=torch.float64))
    x_mean, y_mean = x.mean(), psi.mean()
    a = float(((x - x_mean) * (psi - y_mean)).sum() / ((x - x_mean) ** 2).sum())
    return a, float(y_mean - a * x_mean)


def forecast_worst_query_risk(p: Tensor, n: int, top_k: int = 10) -> float:
    """The forecast elicitation probability of the worst of ``n`` queries, from m measured ones."""
    if not isinstance(n, int) or n < 1:
        raise InvalidArgumentError(f"n must be a positive int, got {n!r}")
    a, b = fit_tail(p, top_k)
    return math.exp(-math.exp(-(a * math.log(n) + b)))


def forecast_log_p(p: Tensor, threshold: float = 0.5, top_k: int = 10) -> float:
    """Natural log of P[elicitation probability > threshold], from the fitted tail: -log n*.

    n* solves a log n + b = -log(-log threshold); a tail that does not grow (a <= 0)
    never reaches the threshold and gives -inf.
    """
    if not 0.0 < threshold < 1.0:
        raise InvalidArgumentError(f"threshold must be in (0, 1), got {threshold!r}")
    a, b = fit_tail(p, top_k)
    if a <= 0.0:
        return -math.inf
    log_n = (-math.log(-math.log(threshold)) - b) / a
    return min(-log_n, 0.0)
