"""Stress cases: problems with exact (or rigorously bounded) answers, each built to break
one habit of adaptive rare-event estimators.

Every builder is deterministic (its own torch.Generator) and takes ``target_log10_p``,
so the test suite can rebuild the same construction at p ~ 1e-2 and check it against
plain sampling. The truth is always computed from the parameters actually used; where
the target is inverted approximately (the union bound) it differs from the target by a
relative O(p). x ~ N(0, I_d) unless said otherwise; catastrophe iff score > 0.

Kinds (``Case.family``):
 two-scales       OR of two orthogonal half-spaces whose scores differ in scale by 1e6; the steep
                  one (large gradient) holds 1/101 of the mass. Exact: 1 - prod Phi(a_i).
 multi-scales     the same with three and four regions, scales 1e-3..1e3; the score nearest 0
                  almost everywhere (scale 1e-3) leads to a region with little of the mass.
 many-regions     OR of 20 / 40 orthogonal directions: more modes than an 8-component mixture.
 high-dim         ||x||^2 > t in d = 200 and 500 (chi-square tail), OR of 100 directions in d = 500.
 needle           NoisyEmpirical over 1000 points; the failure half-space is reachable only from
                  one point's noise. Exact for any half-space: the mean of per-component tails.
 non-smooth       a staircase score (floor of a margin) and a score that jumps by 4 across a
                  hyperplane orthogonal to the margin.
 decoy            the score climbs steeply toward a local maximum just below 0 (not catastrophic);
                  the real failure lies along another direction with half the gradient.
 thin             a slab of width 1e-3 far out (difference of Phi); a thin chi-square shell.
 ill-conditioned  N(mu, Sigma) with cond(Sigma) = 1e4: a linear failure and an AND of two
                  Sigma-orthogonal half-spaces (independent projections, so exact).
 trained          (bench.stress_trained) a trained 8-32-32-1 margin network above a threshold,
                  x ~ N(0, I_8); truth by plain sampling (benchmarks/stress_truth.py), Clopper-Pearson.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from scipy import stats
from torch import Tensor, nn

from .._logspace import LN10, log1mexp, log_ndtr, logmeanexp, to_log10
from ..dists import Gaussian, NoisyEmpirical
from ..dists.base import Distribution
from ..errors import InvalidArgumentError
from ..specs import OutputAbove, Spec
from .building import find_root, linear_layer, orthonormal_rows, standard_normal, tail_z, target_label
from .cases import Case, MaxOut, MinOut, exact_case
from .stress_trained import trained_case

# --- score heads: fixed, parameter-free modules after a linear read-out ---------------------


class Floor(nn.Module):
    """(n, 1) -> (n, 1): floor of the margin, a staircase with plateaus one unit wide."""

    def forward(self, y: Tensor) -> Tensor:
        return torch.floor(y)


class JumpAcross(nn.Module):
    """(n, 2) [margin, side] -> (n, 1): the margin, lowered by ``jump`` where side < 0."""

    def __init__(self, jump: float):
        super().__init__()
        self.jump = jump

    def forward(self, y: Tensor) -> Tensor:
        return (y[:, 0] - self.jump * (y[:, 1] < 0).to(y.dtype))[:, None]


class DecoyMax(nn.Module):
    """(n, 2) [decoy offset, true margin] -> (n, 1): max(-gap - |offset|, margin).

    The first term peaks at -gap < 0 where offset = 0: a local maximum that is never
    catastrophic, so only margin > 0 is.
    """

    def __init__(self, gap: float):
        super().__init__()
        self.gap = gap

    def forward(self, y: Tensor) -> Tensor:
        decoy = -self.gap - y[:, 0].abs()
        return torch.maximum(decoy, y[:, 1])[:, None]


class Band(nn.Module):
    """(n, 1) -> (n, 1): half_width - |y - centre|, positive iff y lies in the open band."""

    def __init__(self, centre: float, half_width: float):
        super().__init__()
        self.centre = centre
        self.half_width = half_width

    def forward(self, y: Tensor) -> Tensor:
        return self.half_width - (y - self.centre).abs()


class SquaredNorm(nn.Module):
    """(n, d) -> (n, 1): ||x||^2, whose law under N(0, I_d) is chi-square with d dof."""

    def forward(self, x: Tensor) -> Tensor:
        return (x**2).sum(dim=1, keepdim=True)


# --- small helpers ----------------------------------------------------------------------------


def _log10_tail(z: float) -> float:
    """log10 P[N(0,1) > z]."""
    return to_log10(float(log_ndtr(torch.tensor(-z, dtype=torch.float64))))


def _exact(name: str, family: str, model: nn.Module, dist: Distribution, spec: Spec,
           log10_p: float, source: str) -> Case:
    return exact_case(f"stress/{family}-{name}", family, model, dist, spec, log10_p, source)


# --- OR of orthogonal half-spaces with per-region scale and mass -----------------------------


def _log10_or(a: Tensor) -> float:
    """log10 P[some z_i > a_i] for independent z_i ~ N(0,1), a (k,): log(1 - prod Phi(a_i))."""
    return to_log10(float(log1mexp(log_ndtr(a).sum())))


def _or_case(name: str, family: str, target_log10_p: float, scales: tuple[float, ...],
             masses: tuple[float, ...], d: int, seed: int) -> Case:
    """Score max_i s_i (u_i.x - a_i) over orthonormal u_i (k, d), x ~ N(0, I_d).

    Region {u_i.x > a_i} holds q_i = p m_i / sum(m) (union bound); the regions are
    independent, so the truth is exact. The scales s_i change the score landscape only.
    """
    g = torch.Generator().manual_seed(seed)
    s = torch.tensor(scales, dtype=torch.float64)
    m = torch.tensor(masses, dtype=torch.float64)
    log10_q = target_log10_p + torch.log10(m / m.sum())
    a = torch.tensor([tail_z(float(q)) for q in log10_q], dtype=torch.float64)
    u = orthonormal_rows(len(scales), d, g)
    model = nn.Sequential(linear_layer(s[:, None] * u, -s * a), MaxOut())
    source = f"exact: 1 - prod_i Phi(a_i) over {len(scales)} orthogonal half-spaces"
    return _exact(name, family, model, standard_normal(d), OutputAbove(0, 0.0), _log10_or(a), source)


def two_scales_case(target_log10_p: float, mass_ratio: float = 100.0, d: int = 10,
                    seed: int = 101) -> Case:
    """max(1000 (u1.x - a1), 0.001 (u2.x - a2)): the steep region holds 1 / (1 + mass_ratio)."""
    return _or_case(target_label(target_log10_p), "two-scales", target_log10_p, (1e3, 1e-3),
                    (1.0, mass_ratio), d, seed)


#: regions -> (scales, masses): the steepest region has the least mass, and the scale-1e-3
#: score, nearest 0 almost everywhere, leads to a region 100x lighter than the scale-1 one
_MULTI_SCALES: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {
    3: ((1e3, 1e-3, 1.0), (1.0, 10.0, 1000.0)),
    4: ((1e3, 1e-3, 3e-2, 1.0), (1.0, 10.0, 100.0, 1000.0)),
}


def multi_scales_case(target_log10_p: float, regions: int = 4, d: int = 12,
                      seed: int = 102) -> Case:
    """Three or four orthogonal regions with scales 1e-3..1e3 and masses over three decades."""
    if regions not in _MULTI_SCALES:
        raise InvalidArgumentError(f"regions must be one of {sorted(_MULTI_SCALES)}, got {regions!r}")
    scales, masses = _MULTI_SCALES[regions]
    return _or_case(f"{regions}regions-{target_label(target_log10_p)}", "multi-scales", target_log10_p,
                    scales, masses, d, seed)


def many_regions_case(target_log10_p: float, m: int = 20, seed: int = 103) -> Case:
    """OR of m equally likely orthogonal directions in d = 2m: more modes than a small mixture."""
    return _or_case(f"or{m}-{target_label(target_log10_p)}", "many-regions", target_log10_p,
                    (1.0,) * m, (1.0,) * m, 2 * m, seed)


def spread_or_case(target_log10_p: float, m: int = 100, d: int = 500, seed: int = 104) -> Case:
    """OR of m orthogonal directions in high dimension d: failure spread thinly over many modes."""
    return _or_case(f"or{m}-d{d}-{target_label(target_log10_p)}", "high-dim", target_log10_p,
                    (1.0,) * m, (1.0,) * m, d, seed)


# --- high dimension: the chi-square tail ----------------------------------------------------


def norm_case(target_log10_p: float, d: int = 200) -> Case:
    """||x||^2 > t under N(0, I_d): a failure set that is no half-space, spread over every direction."""
    t = float(stats.chi2.isf(10.0**target_log10_p, d))
    exact = float(stats.chi2.logsf(t, d)) / LN10
    return _exact(f"norm-d{d}-{target_label(target_log10_p)}", "high-dim", nn.Sequential(SquaredNorm()),
                  standard_normal(d), OutputAbove(0, t), exact, f"exact: chi-square({d}) tail, scipy logsf")


# --- a needle in a noisy empirical distribution ---------------------------------------------


def _needle_points(n_points: int, d: int, radius: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Points uniform on the sphere of ``radius`` (n_points, d) and the unit vector to one of them (d,)."""
    z = torch.randn(n_points, d, generator=g, dtype=torch.float64)
    points = radius * z / z.norm(dim=1, keepdim=True)
    special_index = int(torch.randint(n_points, (1,), generator=g))
    return points, points[special_index] / radius


def needle_log10_p(proj: Tensor, t: float, sigma: float) -> float:
    """log10 (1/N) sum_k Phi((proj_k - t) / sigma): P[w.x > t] under the mixture, proj = points @ w (N,)."""
    return to_log10(float(logmeanexp(log_ndtr((proj - t) / sigma))))


def needle_case(target_log10_p: float, d: int = 16, n_points: int = 1000, radius: float = 3.0,
                sigma: float = 0.1, seed: int = 105) -> Case:
    """w.x > t under NoisyEmpirical(points on a sphere, sigma), w pointing at one hidden point.

    The other points sit at least radius (1 - max cos) below it along w, many sigmas, so at
    small p nearly all the mass comes from that one component's noise.
    """
    g = torch.Generator().manual_seed(seed)
    points, w = _needle_points(n_points, d, radius, g)
    dist = NoisyEmpirical(points, torch.tensor(sigma, dtype=torch.float64))  # not float32 0.1
    proj = points @ w
    t = find_root(lambda s: needle_log10_p(proj, s, sigma), target_log10_p, float(proj.min()),
              radius + 40 * sigma, "needle")
    model = nn.Sequential(linear_layer(w[None, :], torch.tensor([-t], dtype=torch.float64)))
    return _exact(f"d{d}-{target_label(target_log10_p)}", "needle", model, dist,
                  OutputAbove(0, 0.0), needle_log10_p(proj, t, sigma),
                  f"exact: mean over {n_points} components of Phi((w.c_k - t) / sigma)")


# --- non-smooth scores ----------------------------------------------------------------------


def staircase_case(target_log10_p: float, step: float = 1.0, d: int = 10, seed: int = 106) -> Case:
    """floor((u.x - b) / step) > -1/2, i.e. u.x >= b: a half-space behind plateaus ``step`` wide."""
    g = torch.Generator().manual_seed(seed)
    u = orthonormal_rows(1, d, g)
    b = tail_z(target_log10_p)
    model = nn.Sequential(linear_layer(u / step, torch.tensor([-b / step], dtype=torch.float64)), Floor())
    return _exact(f"staircase-{target_label(target_log10_p)}", "non-smooth", model, standard_normal(d),
                  OutputAbove(0, -0.5), _log10_tail(b), "exact: Phi(-b) (floor keeps the half-space)")


def jump_case(target_log10_p: float, jump: float = 4.0, d: int = 10, seed: int = 107) -> Case:
    """(u.x - b) - jump 1[v.x < 0], u orthogonal to v: the score drops by ``jump`` across v.x = 0.

    Catastrophe iff u.x > b (v.x >= 0) or u.x > b + jump (v.x < 0); independent, so exact.
    """
    g = torch.Generator().manual_seed(seed)
    uv = orthonormal_rows(2, d, g)
    b = tail_z(target_log10_p + math.log10(2.0))
    model = nn.Sequential(linear_layer(uv, torch.tensor([-b, 0.0], dtype=torch.float64)), JumpAcross(jump))
    halves = log_ndtr(torch.tensor([-b, -b - jump], dtype=torch.float64))
    exact = to_log10(float(torch.logsumexp(halves, dim=0)) - math.log(2.0))
    return _exact(f"jump-{target_label(target_log10_p)}", "non-smooth", model, standard_normal(d),
                  OutputAbove(0, 0.0), exact, "exact: (Phi(-b) + Phi(-b - jump)) / 2")


def decoy_case(target_log10_p: float, peak: float = 1.5, gap: float = 1e-4, slope: float = 0.5,
               d: int = 10, seed: int = 108) -> Case:
    """max(-gap - |u.x - peak|, slope (v.x - b)), u orthogonal to v.

    Near the mean the decoy term is the max and rises with gradient 1 toward u.x = peak,
    where the score reaches -gap; the failure v.x > b has gradient ``slope``.
    """
    g = torch.Generator().manual_seed(seed)
    u, v = orthonormal_rows(2, d, g)
    b = tail_z(target_log10_p)
    layer = linear_layer(torch.stack([u, slope * v]), torch.tensor([-peak, -slope * b], dtype=torch.float64))
    return _exact(target_label(target_log10_p), "decoy", nn.Sequential(layer, DecoyMax(gap)),
                  standard_normal(d), OutputAbove(0, 0.0), _log10_tail(b),
                  "exact: Phi(-b) (the decoy term is < 0)")


# --- thin regions ---------------------------------------------------------------------------


def slab_log10_p(centre: float, half_width: float) -> float:
    """log10 P[|z - centre| < half_width], z ~ N(0,1), as Phi(h - c) - Phi(-c - h) in log space."""
    ends = log_ndtr(torch.tensor([half_width - centre, -centre - half_width], dtype=torch.float64))
    return to_log10(float(ends[0] + log1mexp(ends[1] - ends[0])))


def slab_case(target_log10_p: float, width: float = 1e-3, d: int = 10, seed: int = 109) -> Case:
    """c - w/2 < u.x < c + w/2 with c far out: a slab too thin for a smooth proposal to fit."""
    g = torch.Generator().manual_seed(seed)
    u = orthonormal_rows(1, d, g)
    h = 0.5 * width
    c = find_root(lambda s: slab_log10_p(s, h), target_log10_p, h, 40.0, "slab width")
    model = nn.Sequential(linear_layer(u, torch.zeros(1, dtype=torch.float64)), Band(c, h))
    return _exact(f"slab-{target_label(target_log10_p)}", "thin", model, standard_normal(d),
                  OutputAbove(0, 0.0), slab_log10_p(c, h), "exact: Phi(h - c) - Phi(-c - h)")


def shell_log10_p(centre: float, half_width: float, d: int) -> float:
    """log10 P[|chi2_d - centre| < half_width], as a difference of survival functions in log space."""
    lo, hi = stats.chi2.logsf([centre - half_width, centre + half_width], d)
    return to_log10(float(lo) + float(log1mexp(torch.tensor(hi - lo, dtype=torch.float64))))


def shell_case(target_log10_p: float, width: float = 0.05, d: int = 20) -> Case:
    """c - w/2 < ||x||^2 < c + w/2 far in the tail: a thin shell, no half-space and no mode."""
    h = 0.5 * width
    c = find_root(lambda s: shell_log10_p(s, h, d), target_log10_p, float(d), 50.0 * d, "shell width")
    model = nn.Sequential(SquaredNorm(), Band(c, h))
    return _exact(f"shell-d{d}-{target_label(target_log10_p)}", "thin", model, standard_normal(d),
                  OutputAbove(0, 0.0), shell_log10_p(c, h, d),
                  f"exact: difference of chi-square({d}) survival functions")


# --- a badly scaled Gaussian ----------------------------------------------------------------


def _eigen_basis(d: int, cond: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Orthonormal eigenvectors as rows (d, d) and eigenvalues (d,) log-spaced, ascending,
    over a ratio of ``cond``."""
    half = 0.5 * math.log10(cond)
    return orthonormal_rows(d, d, g), torch.logspace(-half, half, d, dtype=torch.float64)


def _independent_normals(k: int, lam: Tensor, g: torch.Generator) -> Tensor:
    """Eigen-coordinates c (k, d) of normals w_i with w_i' Sigma w_j = delta_ij (so the
    projections w_i.x are independent): c_i = e_i / sqrt(lam), e_i orthonormal.

    k = 1: e random. k = 2: e = (f +- h) / sqrt(2), f on the small-variance half of the
    spectrum and h on the large one; 1 / sqrt(lam) then lets f dominate both normals, which
    are nearly parallel in x-space although their projections are independent.
    """
    d = lam.numel()
    e = torch.randn(k, d, generator=g, dtype=torch.float64)
    if k == 2:
        f, h = e[0].clone(), e[1].clone()
        f[d // 2 :], h[: d // 2] = 0.0, 0.0
        f, h = f / f.norm(), h / h.norm()
        e = torch.stack([f + h, f - h]) / math.sqrt(2.0)
    elif k != 1:
        raise InvalidArgumentError(f"k must be 1 or 2, got {k!r}")
    return e / e.norm(dim=1, keepdim=True) / lam.sqrt()


def ill_conditioned_case(target_log10_p: float, k: int = 1, d: int = 20, cond: float = 1e4,
                         seed: int = 110) -> Case:
    """All of k independent half-spaces w_i.x > t_i under N(mu, Sigma), cond(Sigma) = cond.

    k = 1 is a linear failure along the thin directions of D; k = 2 an AND of two
    half-spaces that look almost the same in x-space but each cost a factor Phi(-a).
    """
    g = torch.Generator().manual_seed(seed)
    q, lam = _eigen_basis(d, cond, g)
    cov = q.T @ torch.diag(lam) @ q
    cov = 0.5 * (cov + cov.T)
    mean = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    w = _independent_normals(k, lam, g) @ q
    sd = torch.sqrt(torch.einsum("id,de,ie->i", w, cov, w))
    t = w @ mean + sd * tail_z(target_log10_p / k)
    layers: list[nn.Module] = [linear_layer(w, -t)] + ([MinOut()] if k > 1 else [])
    exact = to_log10(float(log_ndtr(-(t - w @ mean) / sd).sum()))
    kind = "linear" if k == 1 else f"and{k}"
    return _exact(f"{kind}-{target_label(target_log10_p)}", "ill-conditioned", nn.Sequential(*layers),
                  Gaussian(mean, cov=cov), OutputAbove(0, 0.0), exact,
                  "exact: prod_i Phi(-(t_i - w_i.mu) / sd_i), Sigma-orthogonal w_i")


# --- the suite ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def stress_cases() -> list[Case]:
    """Every stress case (built once; the list is shared, so do not mutate it)."""
    return [
        two_scales_case(-6.0), two_scales_case(-10.0),
        multi_scales_case(-5.0, regions=3), multi_scales_case(-8.0, regions=4),
        many_regions_case(-6.0, m=20), many_regions_case(-9.0, m=40),
        norm_case(-8.0, d=200), norm_case(-11.0, d=500), spread_or_case(-7.0),
        needle_case(-7.0, d=16), needle_case(-10.0, d=64),
        staircase_case(-8.0), jump_case(-7.0),
        decoy_case(-6.0), decoy_case(-9.0),
        slab_case(-8.0), shell_case(-7.0),
        ill_conditioned_case(-9.0, k=1), ill_conditioned_case(-8.0, k=2),
        trained_case(-5.0), trained_case(-6.0),
    ]
