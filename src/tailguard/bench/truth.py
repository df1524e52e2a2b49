"""Numerical ground truth for the benchmark cases, all returned as log10 p.

Closed forms use scipy's ``log_ndtr`` so they stay accurate far into the tail.
The two numerical ones are built so that every quantity added is non-negative
(no cancellation), which keeps their *relative* accuracy at p ~ 1e-15:

- ``relu_sum_log10_bounds``: the distribution of sum_i a_i relu(x_i - c_i), x ~ N(0, I),
  by direct (not FFT) convolution of lattice masses. Rounding every term down / up
  to the lattice gives a certified lower / upper bound; their mean in log space is
  accurate to second order in the lattice step.
- ``polar_log10_p``: P_{x ~ N(mu, I)}[f(x) > 0] in 2-D. Along each ray from mu the
  region is a union of intervals (ends found on a grid, then by bisection); the
  radial integral between crossings is exact, exp(-r1^2/2) - exp(-r2^2/2), and the
  angle is integrated by the periodic trapezoid rule (spectrally accurate for a
  smooth integrand).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import special

LN10 = math.log(10.0)


def _log1mexp(a: np.ndarray) -> np.ndarray:
    """log(1 - exp(a)) for a <= 0 (Maechler 2012), elementwise."""
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(a > -math.log(2.0), np.log(-np.expm1(a)), np.log1p(-np.exp(a)))


def gaussian_tail_log10(z: float) -> float:
    """log10 P[N(0,1) > z]."""
    return float(special.log_ndtr(-z)) / LN10


def linear_log10_p(w: np.ndarray, b: float, mean: np.ndarray, cov: np.ndarray) -> float:
    """log10 P[w.x + b > 0] for x ~ N(mean, cov): Phi((w.mean + b) / sqrt(w' cov w))."""
    sd = math.sqrt(float(w @ cov @ w))
    return gaussian_tail_log10(-(float(w @ mean) + b) / sd)


def and_halfspaces_log10_p(a: float, k: int) -> float:
    """log10 P[all of k independent N(0,1) exceed a] = k log10 Phi(-a)."""
    return k * gaussian_tail_log10(a)


def or_directions_log10_p(t: float, m: int) -> float:
    """log10 P[any of m independent N(0,1) exceeds t] = log10(1 - Phi(t)^m)."""
    return float(_log1mexp(np.array(m * special.log_ndtr(t)))) / LN10


def _interval_masses(a: float, c: float, edges: np.ndarray) -> np.ndarray:
    """P[a relu(x - c) in (e_j, e_{j+1}]] for x ~ N(0,1) and sorted edges > 0 (len(edges)-1,).

    Differences of survival functions, taken in log space so tiny masses keep their digits.
    """
    log_sf = special.log_ndtr(-(c + edges / a))
    return np.exp(log_sf[:-1] + _log1mexp(log_sf[1:] - log_sf[:-1]))


def _term_lattice(a: float, c: float, h: float, k: int, round_up: bool) -> np.ndarray:
    """Masses (k+1,) of a relu(x - c) rounded to the lattice {0, h, ..., k h}; index k = "beyond"."""
    atom = float(special.ndtr(c))
    edges = h * np.arange(0, k + 1, dtype=np.float64)
    inner = _interval_masses(a, c, edges)  # (k,): interval (j h, (j+1) h]
    beyond_last = math.exp(float(special.log_ndtr(-(c + edges[-1] / a))))
    masses = np.zeros(k + 1)
    if round_up:  # (j h, (j+1) h] -> (j+1) h
        masses[0] = atom
        masses[1:] = inner
        masses[k] += beyond_last
    else:  # (j h, (j+1) h] -> j h, and everything past k h -> k h
        masses[:k] = inner
        masses[0] += atom
        masses[k] = beyond_last
    return masses


def _convolve_folded(m1: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """Distribution of the sum of two lattice variables, with everything at index >= k folded to k."""
    k = len(m1) - 1
    full = np.convolve(m1, m2)
    out = full[: k + 1].copy()
    out[k] = full[k:].sum()
    return out


def relu_sum_log10_bounds(
    a: np.ndarray, c: np.ndarray, t: float, n_grid: int = 4000
) -> tuple[float, float]:
    """Certified (lower, upper) log10 P[sum_i a_i relu(x_i - c_i) > t], x ~ N(0, I), a_i > 0, t > 0.

    Each term is rounded down (lower) or up (upper) to the lattice h Z, h = t / n_grid;
    the lattice sums are exact convolutions of non-negative masses (O(n_grid^2) each).
    """
    h = t / n_grid
    k = int(math.floor(t / h)) + 1  # k h > t >= (k - 1) h
    bounds = []
    for round_up in (False, True):
        total = _term_lattice(float(a[0]), float(c[0]), h, k, round_up)
        for ai, ci in zip(a[1:], c[1:], strict=True):
            total = _convolve_folded(total, _term_lattice(float(ai), float(ci), h, k, round_up))
        bounds.append(math.log10(total[k]))
    return bounds[0], bounds[1]


def relu_sum_log10_p(a: np.ndarray, c: np.ndarray, t: float, n_grid: int = 4000) -> float:
    """Midpoint (in log space) of the certified bounds: error second order in the step."""
    low, high = relu_sum_log10_bounds(a, c, t, n_grid)
    return 0.5 * (low + high)


def _crossings(values: np.ndarray) -> np.ndarray:
    """Indices j where sign(values[:, j]) != sign(values[:, j + 1]): (n_rays, n_r) -> bool (n_rays, n_r-1)."""
    inside = values > 0
    return inside[:, 1:] != inside[:, :-1]


def polar_log10_p(
    score: Callable[[np.ndarray], np.ndarray],
    mean: np.ndarray,
    n_angles: int = 2048,
    r_max: float = 12.0,
    n_radii: int = 1200,
    bisection_steps: int = 40,
) -> float:
    """log10 P_{x ~ N(mean, I_2)}[score(x) > 0] by polar integration around ``mean``.

    score maps (n, 2) -> (n,). Region pieces thinner than r_max / n_radii along a ray
    can be missed; beyond r_max the mass is below exp(-r_max^2 / 2).
    """
    theta = 2 * math.pi * np.arange(n_angles) / n_angles
    u = np.stack([np.cos(theta), np.sin(theta)], axis=1)  # (A, 2)
    r = np.linspace(0.0, r_max, n_radii)
    pts = mean[None, None, :] + r[None, :, None] * u[:, None, :]  # (A, R, 2)
    vals = score(pts.reshape(-1, 2)).reshape(n_angles, n_radii)
    rays, cols = np.nonzero(_crossings(vals))
    lo, hi = r[cols], r[cols + 1]
    inside_lo = vals[rays, cols] > 0
    for _ in range(bisection_steps):
        mid = 0.5 * (lo + hi)
        inside_mid = score(mean[None, :] + mid[:, None] * u[rays]) > 0
        same = inside_mid == inside_lo
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
    ends = 0.5 * (lo + hi)
    # radial mass of a ray = sum over its intervals (r1, r2) of exp(-r1^2/2) - exp(-r2^2/2):
    # +exp(-r^2/2) at each entry, -exp(-r^2/2) at each exit, with r = 0 and r = r_max as ends
    sign = np.where(inside_lo, -1.0, 1.0)
    per_ray = np.where(vals[:, 0] > 0, 1.0, 0.0) - np.where(vals[:, -1] > 0, math.exp(-0.5 * r_max**2), 0.0)
    np.add.at(per_ray, rays, sign * np.exp(-0.5 * ends**2))
    p = float(per_ray.clip(min=0.0).mean())
    return math.log10(p) if p > 0 else -math.inf
