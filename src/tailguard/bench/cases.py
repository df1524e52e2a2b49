"""Benchmark cases with known answers: (model, D, spec) plus the true log10 p and its source.

Every builder is deterministic (parameters from a private torch.Generator) and takes
``target_log10_p``: the threshold or shift is set from the exact formula (or by
root-finding on the numerical truth) so that families can be swept from 1e-3 down
to 1e-15. ``true_log10_p`` is the value the case really has, which for numerical
truths differs slightly from the target.

Families:
 1. ``linear``  linear margin under a correlated Gaussian (d = 20): Phi(.) exactly.
 2. ``and``     min of k = 3 orthonormal projections above a, N(0, I): Phi(-a)^k.
 3. ``or``      max of m = 4 orthonormal projections above t: 1 - (1 - Phi(-t))^m.
 4. ``relusum`` sum_i a_i relu(x_i - c_i) > t, N(0, I): lattice convolution (truth.py).
 5. ``polar``   2 -> 16 -> 16 -> 2 ReLU classifier, ClassIs(1), N(mu, I): polar integration.
 6. ``digits``  trained 64 -> 64 -> 10 MLP on noisy digits: plain sampling (digits.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy import special
from torch import Tensor, nn

from ..dists import Gaussian
from ..dists.base import Distribution
from ..specs import ClassIs, OutputAbove, Spec
from . import truth
from .building import find_root, linear_layer, orthonormal_rows, standard_normal, tail_z

#: root tolerances the recorded benchmark cases were built with (scipy's brentq defaults for rtol)
RECORDED_TOLERANCES = {"xtol": 1e-4, "rtol": 4 * np.finfo(float).eps}


@dataclass(frozen=True, eq=False)
class Case:
    """One benchmark problem. ``truth_ci_log10`` is the uncertainty of the truth itself.

    Exact truths have a zero-width interval; numerical ones carry their certified
    bounds; sampled ones their Clopper-Pearson interval.
    """

    name: str
    family: str
    model: nn.Module
    dist: Distribution
    spec: Spec
    true_log10_p: float
    truth_ci_log10: tuple[float, float]
    truth_source: str


class MinOut(nn.Module):
    """(n, k) -> (n, 1): the smallest output (the AND of half-spaces {y_j > t})."""

    def forward(self, y: Tensor) -> Tensor:
        return y.min(dim=1, keepdim=True).values


class MaxOut(nn.Module):
    """(n, m) -> (n, 1): the largest output (the OR of half-spaces {y_j > t})."""

    def forward(self, y: Tensor) -> Tensor:
        return y.max(dim=1, keepdim=True).values


def exact_case(name: str, family: str, model: nn.Module, dist: Distribution, spec: Spec,
               log10_p: float, source: str) -> Case:
    """A case whose truth is exact: its interval is the point."""
    return Case(name, family, model, dist, spec, log10_p, (log10_p, log10_p), source)


def linear_case(target_log10_p: float, d: int = 20, seed: int = 0) -> Case:
    """Linear margin w.x > t under N(mean, cov) with a random positive-definite cov."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    cov = a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)
    cov = 0.5 * (cov + cov.T)
    mean = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    sd = math.sqrt(float(w @ cov @ w))
    t = float(w @ mean) + sd * tail_z(target_log10_p)
    model = nn.Sequential(linear_layer(w[None, :]))
    exact = truth.linear_log10_p(w.numpy(), -t, mean.numpy(), cov.numpy())
    return exact_case(f"linear/{target_log10_p:g}", "linear", model, Gaussian(mean, cov=cov),
                  OutputAbove(0, t), exact, "exact: Phi((w.mu - t) / sqrt(w' cov w))")


def and_case(target_log10_p: float, k: int = 3, d: int = 10, seed: int = 1) -> Case:
    """All of k orthonormal projections of x ~ N(0, I_d) exceed a."""
    g = torch.Generator().manual_seed(seed)
    a = tail_z(target_log10_p / k)
    model = nn.Sequential(linear_layer(orthonormal_rows(k, d, g)), MinOut())
    dist = standard_normal(d)
    return exact_case(f"and/{target_log10_p:g}", "and", model, dist, OutputAbove(0, a),
                  truth.and_halfspaces_log10_p(a, k), f"exact: Phi(-a)^{k}")


def or_case(target_log10_p: float, m: int = 4, d: int = 10, seed: int = 2) -> Case:
    """Any of m orthonormal projections of x ~ N(0, I_d) exceeds t: m separate failure modes."""
    g = torch.Generator().manual_seed(seed)
    log_p = target_log10_p * math.log(10.0)
    tail = -math.expm1(math.log(-math.expm1(log_p)) / m) if log_p > -30 else math.exp(log_p) / m
    t = -float(special.ndtri(tail))
    model = nn.Sequential(linear_layer(orthonormal_rows(m, d, g)), MaxOut())
    dist = standard_normal(d)
    return exact_case(f"or/{target_log10_p:g}", "or", model, dist, OutputAbove(0, t),
                  truth.or_directions_log10_p(t, m), f"exact: 1 - (1 - Phi(-t))^{m}")


def relusum_case(target_log10_p: float, d: int = 6, seed: int = 3) -> Case:
    """sum_i a_i relu(x_i - c_i) > t under N(0, I_d): one input-separable ReLU layer."""
    g = torch.Generator().manual_seed(seed)
    a = 0.5 + torch.rand(d, generator=g, dtype=torch.float64)
    c = torch.rand(d, generator=g, dtype=torch.float64) - 0.5
    an, cn = a.numpy(), c.numpy()
    t = find_root(lambda s: truth.relu_sum_log10_p(an, cn, s, n_grid=400), target_log10_p, 0.05, 40.0,
                  "ReLU sum", **RECORDED_TOLERANCES)
    low, high = truth.relu_sum_log10_bounds(an, cn, t)
    model = nn.Sequential(
        linear_layer(torch.eye(d, dtype=torch.float64), -c), nn.ReLU(), linear_layer(a[None, :])
    )
    dist = standard_normal(d)
    return Case(f"relusum/{target_log10_p:g}", "relusum", model, dist, OutputAbove(0, t),
                0.5 * (low + high), (low, high),
                "numerical: lattice convolution, certified bounds (truth.relu_sum_log10_bounds)")


def _random_classifier(seed: int) -> nn.Sequential:
    """2 -> 16 -> 16 -> 2 ReLU MLP in float64 with N(0, 1/fan_in) weights and N(0, 0.1) biases."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for fan_in, fan_out in ((2, 16), (16, 16), (16, 2)):
        w = torch.randn(fan_out, fan_in, generator=g, dtype=torch.float64) / math.sqrt(fan_in)
        b = 0.1 * torch.randn(fan_out, generator=g, dtype=torch.float64)
        layers += [linear_layer(w, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _margin_fn(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """(n, 2) numpy -> (n,) numpy ClassIs(1) score of the classifier, batched."""
    spec = ClassIs(1)

    def score(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            xt = torch.from_numpy(np.ascontiguousarray(x))
            return torch.cat(
                [spec.score(c, model(c)) for c in torch.split(xt, 1 << 20)]
            ).numpy()

    return score


def _rare_direction(score: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Unit vector pointing away from where class 1 wins on a circle of radius 10 (2,)."""
    theta = np.linspace(0.0, 2 * math.pi, 3600, endpoint=False)
    ring = 10.0 * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    inside = score(ring) > 0
    centre = ring[inside].mean(axis=0)
    return -centre / np.linalg.norm(centre)


def polar_case(target_log10_p: float, seed: int = 7) -> Case:
    """A 2-D ReLU classifier; D = N(s v, I) shifted along v until class 1 has p ~ target."""
    model = _random_classifier(seed)
    score = _margin_fn(model)
    v = _rare_direction(score)

    def coarse(s: float) -> float:
        return truth.polar_log10_p(score, s * v, n_angles=256, n_radii=400, bisection_steps=15)

    s = find_root(coarse, target_log10_p, 0.0, 14.0, "polar margin", **RECORDED_TOLERANCES)
    mean = s * v
    exact = truth.polar_log10_p(score, mean)
    dist = Gaussian(torch.from_numpy(mean))
    return exact_case(f"polar/{target_log10_p:g}", "polar", model, dist, ClassIs(1), exact,
                  "numerical: polar integration (truth.polar_log10_p)")


BUILDERS: dict[str, Callable[[float], Case]] = {
    "linear": linear_case,
    "and": and_case,
    "or": or_case,
    "relusum": relusum_case,
    "polar": polar_case,
}


@lru_cache(maxsize=64)
def build_case(family: str, target_log10_p: float) -> Case:
    """The case of ``family`` at ``target_log10_p`` (cached: numerical truths take seconds)."""
    if family == "digits":
        from .digits import digits_case

        return digits_case()
    return BUILDERS[family](target_log10_p)
