"""All probability arithmetic in log space, in float64.

Probabilities near 1e-12 and below are only ever handled through their natural
logarithms here; the rest of the package calls these helpers instead of writing
its own ``log(mean(exp(...)))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special, stats

LN10 = math.log(10.0)


def to_log10(log_p: float) -> float:
    """Natural log -> log10 (``-inf`` stays ``-inf``)."""
    return log_p / LN10


def logmeanexp(log_x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log(mean(exp(log_x))) along ``dim``; -inf when every entry is -inf."""
    n = log_x.shape[dim]
    return torch.logsumexp(log_x, dim=dim) - math.log(n)


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a <= 0, accurate for both small and large |a| (Maechler 2012)."""
    a = torch.as_tensor(a)
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def log_ndtr(z: torch.Tensor) -> torch.Tensor:
    """log Phi(z), differentiable and accurate far in the lower tail."""
    return torch.special.log_ndtr(z)


def ess(log_w: torch.Tensor) -> float:
    """Effective sample size (sum w)^2 / sum w^2 of importance weights given in log space."""
    log_w = log_w.double()
    if not torch.isfinite(log_w).any():
        return 0.0
    return float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)))


@dataclass(frozen=True)
class ParetoTail:
    """A generalised Pareto fitted to the ``m`` largest weights above the next one (as in PSIS).

    shape: k; log_scale: ln sigma, with sigma in units of the threshold weight exp(log_threshold)
    (kept as a log: weights can span more than a float64's range above the threshold).
    """

    shape: float
    log_scale: float
    log_threshold: float
    m: int


def pareto_tail(log_w: torch.Tensor) -> ParetoTail | None:
    """The tail fit of importance weights given in log space; None with too few positive weights.

    The tail is the m = min(n / 5, 3 sqrt n) largest weights (Vehtari et al. 2015,
    "Pareto smoothed importance sampling"); the weights' common scale cancels in the
    shape, so the fit is to the excesses over the threshold in units of the largest weight
    (in [0, 1], so no overflow), and the scale is taken back to threshold units in log space.
    """
    w = log_w.double()
    w = w[torch.isfinite(w)]
    n = w.numel()
    if n < 20:
        return None
    m = int(min(0.2 * n, 3 * math.sqrt(n)))
    tail, _ = torch.sort(w, descending=True)
    threshold = tail[m]
    span = float(tail[0] - threshold)
    excess = (torch.exp(tail[:m] - tail[0]) - math.exp(-span)).numpy()
    if np.all(excess <= 0):
        return None
    shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
    return ParetoTail(float(shape), math.log(max(scale, 1e-300)) + span, float(threshold), m)


def pareto_k(log_w: torch.Tensor) -> float:
    """Shape k of the generalised Pareto fitted to the largest importance weights; nan if unfit.

    k > 0.5: the fitted tail has no finite variance; k > 0.7: the weights are so
    heavy-tailed that the variance estimate, and hence the CI, cannot be trusted.
    """
    tail = pareto_tail(log_w)
    return math.nan if tail is None else tail.shape


def log_mean_upper_heavier_tail(log_w: torch.Tensor, confidence: float) -> float:
    """An upper end for log mean(w) that allows the weights' tail to be heavier than it looks.

    A variance-based interval trusts the weights drawn. With a heavy tail (Pareto k
    near or above 0.5) most runs have not yet drawn the weights that carry much of the
    mean, and their sample variance is low for the same reason, so the interval falls
    short on its upper side. Here the tail's mean is recomputed as the generalised
    Pareto mean threshold * (1 + sigma / (1 - k_up)), with k_up the upper confidence
    limit of the shape (asymptotic standard error (1 + k) / sqrt(m)), and the bulk kept
    as drawn. ``log_w`` holds every draw's term (-inf for draws that contribute
    nothing). Returns +inf when k_up reaches 1 (the mean itself may not exist).
    """
    n_draws = log_w.numel()
    tail = pareto_tail(log_w)
    if tail is None:
        return -math.inf
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    k_up = tail.shape + z * (1 + max(tail.shape, 0.0)) / math.sqrt(tail.m)
    if k_up >= 1.0:
        return math.inf
    finite, _ = torch.sort(log_w[torch.isfinite(log_w)].double(), descending=True)
    log_bulk = float(torch.logsumexp(finite[tail.m:], 0))
    log_excess_mean = tail.log_scale - math.log(1 - k_up)
    log_tail = tail.log_threshold + math.log(tail.m) + float(np.logaddexp(0.0, log_excess_mean))
    return float(np.logaddexp(log_bulk, log_tail)) - math.log(n_draws)


def binomial_log_ci(hits: int, n: int, confidence: float) -> tuple[float, float]:
    """Exact Clopper-Pearson interval for a binomial proportion, as natural logs.

    With zero hits the lower end is -inf and the upper end is finite (about 3/n at 95 %).
    """
    alpha = 1.0 - confidence
    if hits == 0:
        low = -math.inf
    else:
        low = math.log(special.betaincinv(hits, n - hits + 1, alpha / 2))
    if hits == n:
        high = 0.0
    else:
        q = special.betaincinv(hits + 1, n - hits, 1 - alpha / 2)
        high = math.log(q) if hits > 0 else math.log1p(-((alpha / 2) ** (1.0 / n)))
    return low, high


def normal_log_ci(log_p: float, rel_se: float, confidence: float) -> tuple[float, float]:
    """CI for p from a point estimate and the relative standard error of p (delta method on log p).

    Using log p keeps both ends positive and matches the right skew of rare-event estimators.
    """
    if not math.isfinite(log_p):
        return -math.inf, log_p
    z = stats.norm.ppf(0.5 + confidence / 2)
    half = z * math.sqrt(math.log1p(rel_se**2))
    return log_p - half, min(log_p + half, 0.0)


def log_ci_from_log_samples(log_values: np.ndarray, confidence: float) -> tuple[float, float]:
    """t-interval on log p from independent repeated estimates of log p (e.g. splitting runs)."""
    k = len(log_values)
    mean = float(np.mean(log_values))
    if k < 2:
        return -math.inf, 0.0
    se = float(np.std(log_values, ddof=1) / math.sqrt(k))
    t = stats.t.ppf(0.5 + confidence / 2, df=k - 1)
    return mean - t * se, min(mean + t * se, 0.0)
