"""Quadratic logit decomposition (QLD): extrapolate from recombined final activations.

Wu & Hilton (2024), "Estimating the probabilities of rare outputs in language
models" (arXiv 2410.13211). The logits are an affine map of the final residual
activation a: y = W a + b. Draw n activations from D and whiten them
(z = L^-1 (a - mean), L L^T their covariance); in z-space the region where target
t wins is a polyhedron {z : A z + c >= 0}, one row per rival token. Let u be the
direction of the shortest vector from the mean (z = 0) into that region. Split every
sample into its component along u and the rest, z_i = r_i + (u . z_i) u, and treat
the two parts as independent: the estimate is the share of all n^2 recombinations
r_i + (u . z_j) u that land in the region. A sample's rest fixes an interval of the
scalar along u where t wins, so the count over j is two binary searches over the
sorted scalars: O(n log n), not n^2.

This sees catastrophes no sample reached (the n^2 pairs reach further than the n
samples), at the cost of an assumption (independence of u . z and the rest) that
nothing checks: a heuristic, flagged as one; its CI is the sampling error of the
pair average only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from scipy import optimize, stats
from torch import nn

from .._logspace import binomial_log_ci
from ..dists.base import Distribution
from ..dists.tokens import IndependentTokens
from ..oracle import ScoreOracle
from ..specs import ClassIs, Spec
from .base import Outcome, register

#: added to the activation covariance's diagonal (relative to its mean variance) before whitening
RIDGE = 1e-6


@register
@dataclass(frozen=True)
class QuadraticLogitDecomposition:
    """QLD for models with ``residual(x) -> (n, d)`` and logits ``unembed(residual)``, an nn.Linear."""

    name: ClassVar[str] = "qld"

    def unsupported_reason(self, model: nn.Module, dist: Distribution, spec: Spec) -> str | None:
        if not isinstance(spec, ClassIs):
            return "qld estimates P[argmax = t]: it needs a ClassIs spec"
        if not isinstance(dist, IndependentTokens):
            return f"qld needs IndependentTokens inputs, got {type(dist).__name__}"
        if not callable(getattr(model, "residual", None)) or not isinstance(getattr(model, "unembed", None),
                                                                              nn.Linear):
            return ("qld needs a model with a residual(x) method giving the final activations and an "
                    "nn.Linear unembed mapping them to the logits (as tailguard.tasks.TokenTransformer)")
        return None

    def min_budget(self) -> int:
        return 100

    def run(self, oracle: ScoreOracle, budget: int, generator: torch.Generator, confidence: float) -> Outcome:
        model, spec = oracle.model, oracle.spec
        assert isinstance(spec, ClassIs)
        residual = getattr(model, "residual")  # noqa: B009 (checked by unsupported_reason)
        a = oracle.features(oracle.dist.sample(budget, generator), residual).numpy()  # (n, d)
        unembed: nn.Linear = model.unembed  # type: ignore[assignment]
        w = unembed.weight.detach().double().cpu().numpy()
        b = (unembed.bias.detach().double().cpu().numpy() if unembed.bias is not None
             else np.zeros(w.shape[0]))
        n, d = a.shape
        mean = a.mean(0)
        cov = np.cov(a, rowvar=False).reshape(d, d)
        cov += RIDGE * max(float(np.trace(cov)) / d, 1e-12) * np.eye(d)
        chol = np.linalg.cholesky(cov)
        z = np.linalg.solve(chol, (a - mean).T).T  # whitened (n, d)
        rivals = [j for j in range(w.shape[0]) if j != spec.k]
        big_a = (w[spec.k] - w[rivals]) @ chol  # (V-1, d): t beats j iff big_a z + c >= 0
        c = (w[spec.k] - w[rivals]) @ mean + b[spec.k] - b[rivals]
        diagnostics: dict[str, object] = {"draws": n, "hits": int(((z @ big_a.T + c) >= 0).all(1).sum())}
        u = _shortest_direction(big_a, c)
        if u is None:
            return Outcome(-math.inf, (-math.inf, -math.inf), diagnostics,
                           ("no activation makes the target win: it is unreachable through the unembedding",),
                           heuristic=True)
        along = z @ u  # (n,)
        rest = z - along[:, None] * u
        low, high = _intervals(rest @ big_a.T + c, big_a @ u)  # (n,), (n,)
        ordered = np.sort(along)
        counts = np.searchsorted(ordered, high, side="right") - np.searchsorted(ordered, low, side="left")
        counts = np.where(high >= low, counts, 0)
        p_hat = float(counts.sum()) / n**2
        diagnostics["direction_length"] = float(np.linalg.norm(u))
        warning = ("QLD assumes the activation's component along the shortest direction to the target's "
                   "region is independent of the rest; its CI ignores that assumption",)
        if p_hat == 0.0:
            return Outcome(-math.inf, (-math.inf, binomial_log_ci(0, n * n, confidence)[1]), diagnostics,
                           warning, heuristic=True)
        per_rest = counts / n
        per_along = _share_of_rests_per_scalar(along, low, high)
        se = math.sqrt((per_rest.var() + per_along.var()) / n)
        z_q = stats.norm.ppf(0.5 + confidence / 2)
        log_p = math.log(p_hat)
        rel = se / p_hat
        half = z_q * math.sqrt(math.log1p(rel**2))
        return Outcome(log_p, (log_p - half, min(log_p + half, 0.0)), diagnostics, warning, heuristic=True)


def _shortest_direction(big_a: np.ndarray, c: np.ndarray) -> np.ndarray | None:
    """Unit vector towards the point of {z : big_a z + c >= 0} nearest the origin (None if empty)."""
    if (c >= 0).all():  # the mean itself is in the region: any direction; take the most central one
        return big_a.mean(0) / max(float(np.linalg.norm(big_a.mean(0))), 1e-300)
    start = np.linalg.lstsq(big_a, -c + 1e-3, rcond=None)[0]
    result = optimize.minimize(lambda v: 0.5 * float(v @ v), start, jac=lambda v: v, method="SLSQP",
                               constraints=[{"type": "ineq", "fun": lambda v: big_a @ v + c,
                                             "jac": lambda v: big_a}])
    point = result.x
    if not (big_a @ point + c >= -1e-6).all():
        return None
    return point / max(float(np.linalg.norm(point)), 1e-300)


def _intervals(offsets: np.ndarray, slopes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each rest (rows of offsets (n, m)), the interval of s with offsets + s * slopes >= 0 everywhere."""
    with np.errstate(divide="ignore", invalid="ignore"):
        bounds = -offsets / slopes  # (n, m)
    low = np.where(slopes > 0, bounds, -np.inf).max(1)
    high = np.where(slopes < 0, bounds, np.inf).min(1)
    flat_bad = ((slopes == 0) & (offsets < 0)).any(1)  # a constraint the scalar cannot fix
    return np.where(flat_bad, np.inf, low), np.where(flat_bad, -np.inf, high)


def _share_of_rests_per_scalar(along: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """For each scalar s_j, the share of rests whose interval holds it: (n,)."""
    valid = high >= low
    lows, highs = np.sort(low[valid]), np.sort(high[valid])
    started = np.searchsorted(lows, along, side="right")
    ended = np.searchsorted(highs, along, side="left")
    return (started - ended) / along.shape[0]
