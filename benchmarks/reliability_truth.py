"""Check otbenchmark's reference probabilities independently; print the TRUTHS table.

    .venv/bin/python benchmarks/reliability_truth.py > reliability_truth.log

Every check runs on the torch port in standard normal space (the model of the
tailguard case itself, z ~ N(0, I_d), failure iff score > 0), by one of:
  exact       a closed form (Phi, the regularised incomplete gamma function);
  quad1d      a 1-D integral left after integrating the other inputs out by hand
              (scipy.integrate.quad, interval = 10 x its error estimate);
  quad2d      d = 2: for each z1 of a Simpson grid, the failure set in z2 is a union
              of intervals whose ends are found by scanning and bisection on the
              model, so P(fail | z1) is a sum of Phi differences; interval =
              2 x the change from halving both grids;
  mc          plain sampling, Clopper-Pearson 95 % interval.
Self-checks follow the table: quad2d against R-S (exact) and RP75 (a 1-D integral),
importance sampling from Gaussians at the design points against the truths below
1e-5, and 1e7-draw plain sampling against every other non-sampled truth.
One CPU thread; about ten minutes.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import integrate, special, stats

from tailguard.bench.reliability import LimitStateModel
from tailguard.bench.reliability_problems import PROBLEMS_BY_NAME

OTBENCHMARK_P = {  # otbenchmark 0.2.1's getProbability(), on OpenTURNS 1.27
    "RP8": 0.0007897927545598118, "RP14": 0.00077285, "RP22": 0.004207305511299618,
    "RP24": 0.00286, "RP25": 4.148566293759747e-05, "RP28": 1.4532945550025393e-07,
    "RP31": 0.003226681209587691, "RP33": 0.00257, "RP35": 0.00347894632, "RP38": 0.0081,
    "RP53": 0.0313, "RP54": 0.000998, "RP55": 0.5600144282863704, "RP57": 0.0284,
    "RP60": 0.0456, "RP63": 0.000379, "RP75": 0.00981929872154689, "RP77": 2.87e-07,
    "RP89": 0.00543, "RP91": 0.000697, "RP107": 2.92e-07, "RP110": 3.19e-05, "RP111": 7.65e-07,
    "four-branch": 0.0022227950661944398, "R-S": 0.07864960352514257,
    "axial-beam": 0.02919819462483095,
}


@dataclass(frozen=True)
class Checked:
    """A checked probability with the interval of the check."""

    p: float
    low: float
    high: float
    source: str


def score_fn(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """(n, d) standard-normal points -> (n,) scores of the case's model."""
    model = LimitStateModel(PROBLEMS_BY_NAME[name])

    def score(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(z)))[:, 0].numpy()

    return score


# --- exact -------------------------------------------------------------------------------------
def _exact(p: float, formula: str) -> Checked:
    return Checked(p, p, p, f"exact: {formula}")


EXACT: dict[str, Callable[[], Checked]] = {
    "RP54": lambda: _exact(float(special.gammainc(20, 8.951)),
                           "P[Gamma(20, 1) < 8.951], the sum of 20 Exp(1)"),
    "RP107": lambda: _exact(float(special.ndtr(-5.0)), "Phi(-5), the sum of 10 N(0, 1) over sqrt(10)"),
    "RP110": lambda: _exact(float(-np.expm1(np.log1p(-special.ndtr(-4.0))
                                            + np.log1p(-special.ndtr(-5.0)))),
                            "1 - (1 - Phi(-4)) (1 - Phi(-5)): x1 > 4 or x2 > 5"),
    "R-S": lambda: _exact(float(special.ndtr(-math.sqrt(2.0))), "Phi(-sqrt(2)), R - S ~ N(2, 2)"),
}


# --- 1-D quadrature ----------------------------------------------------------------------------
def _quad(fn: Callable[[float], float], pieces: list[float]) -> tuple[float, float]:
    """Integral of fn over consecutive pieces, and the summed error estimate."""
    total, error = 0.0, 0.0
    for a, b in zip(pieces[:-1], pieces[1:], strict=True):
        value, err = integrate.quad(fn, a, b, epsabs=0.0, epsrel=1e-12, limit=500)
        total, error = total + value, error + err
    return total, error


def _rp33() -> tuple[float, float]:
    """{z1+z2+z3 > 3 sqrt 3} or {z3 > 3}: 2 Phi(-3) minus the overlap, integrated over z3."""
    overlap, err = _quad(lambda t: stats.norm.pdf(t) * special.ndtr((t - 3 * math.sqrt(3)) / math.sqrt(2)),
                         [3.0, 6.0, 40.0])
    return 2 * float(special.ndtr(-3.0)) - overlap, err


def _rp63() -> tuple[float, float]:
    """x1 > 0.1 Q - 4.5 with Q ~ chi2(99) independent of x1: E_Q[Phi(4.5 - 0.1 Q)]."""
    chi2 = stats.chi2(99)
    return _quad(lambda q: chi2.pdf(q) * special.ndtr(4.5 - 0.1 * q), [0.0, 45.0, 99.0, 200.0, 600.0])


def _rp77() -> tuple[float, float]:
    """Given x3 = 4 + u: if u <= 1, x1 - x2 ~ N(10, 1.25) below x3; else x2 ~ N(0, 1) above x3."""
    low, e1 = _quad(lambda u: stats.norm.pdf(u) * special.ndtr((u - 6.0) / math.sqrt(1.25)),
                    [-40.0, -5.0, 0.0, 1.0])
    high, e2 = _quad(lambda u: stats.norm.pdf(u) * special.ndtr(-(4.0 + u)), [1.0, 5.0, 40.0])
    return low + high, e1 + e2


QUAD1D: dict[str, tuple[Callable[[], tuple[float, float]], str]] = {
    "RP33": (_rp33, "2 Phi(-3) - int_3^inf phi(t) Phi((t - 3 sqrt 3) / sqrt 2) dt"),
    "RP63": (_rp63, "E[Phi(4.5 - 0.1 Q)], Q ~ chi2(99)"),
    "RP77": (_rp77, "int over x3 of the conditional failure probability"),
}


def quad1d(name: str) -> Checked:
    fn, formula = QUAD1D[name]
    p, err = fn()
    half = 10 * err + 1e-12 * p
    return Checked(p, p - half, p + half, f"quadrature (1-D): {formula}")


# --- 2-D quadrature by conditional roots --------------------------------------------------------
def _g(r: np.ndarray) -> np.ndarray:
    """Phi(r) for r <= 0 and Phi(r) - 1 above: interval masses without cancellation in either tail."""
    return np.where(r <= 0, special.ndtr(np.minimum(r, 0.0)), -special.ndtr(-np.maximum(r, 0.0)))


def _bisect(score: Callable[[np.ndarray], np.ndarray], z1: np.ndarray, lo: np.ndarray,
            hi: np.ndarray, fail_lo: np.ndarray, steps: int = 60) -> np.ndarray:
    """The failure boundary between lo and hi (z2 values, one per row of z1), to rounding."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        same = (score(np.stack([z1, mid], axis=1)) > 0) == fail_lo
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
    return 0.5 * (lo + hi)


def _conditional(score: Callable[[np.ndarray], np.ndarray], z1: np.ndarray,
                 z2: np.ndarray) -> np.ndarray:
    """P(fail | z1) for each z1 (rows), from a scan over z2 (which contains 0) and bisection.

    P = sum over exits b of G(b) - sum over entries a of G(a) + 1[fail at z2 = 0],
    with G = _g; ends of the scan count as -inf / +inf, where G = 0.
    """
    grid = np.stack(np.broadcast_arrays(z1[:, None], z2[None, :]), axis=-1).reshape(-1, 2)
    fail = (score(grid) > 0).reshape(len(z1), len(z2))
    rows, cols = np.nonzero(fail[:, :-1] != fail[:, 1:])
    roots = _bisect(score, z1[rows], z2[cols], z2[cols + 1], fail[rows, cols])
    sign = np.where(fail[rows, cols], 1.0, -1.0)  # fail before the root: an exit
    out = np.zeros(len(z1))
    np.add.at(out, rows, sign * _g(roots))
    return out + fail[:, len(z2) // 2]


def _simpson_weights(n: int, h: float) -> np.ndarray:
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return w * h / 3.0


def quad2d_p(score: Callable[[np.ndarray], np.ndarray], n: int, half_width: float = 10.0,
             chunk: int = 128) -> float:
    """P[score(z) > 0], z ~ N(0, I_2), Simpson over z1 in [-L, L] with n (odd) points."""
    z1 = np.linspace(-half_width, half_width, n)
    z2 = np.linspace(-half_width, half_width, n)
    cond = np.concatenate([_conditional(score, z1[i:i + chunk], z2) for i in range(0, n, chunk)])
    return float(np.sum(_simpson_weights(n, z1[1] - z1[0]) * stats.norm.pdf(z1) * cond))


def quad2d(name: str) -> Checked:
    score = score_fn(name)
    coarse, fine = quad2d_p(score, 2001), quad2d_p(score, 4001)
    half = 2 * abs(fine - coarse) + 1e-12 * fine
    return Checked(fine, fine - half, fine + half,
                   "quadrature (2-D): conditional roots in z2, Simpson in z1, 4001 x 4001")


# --- plain sampling ----------------------------------------------------------------------------
def mc_hits(name: str, n: int, seed: int, batch: int = 1_000_000) -> int:
    problem = PROBLEMS_BY_NAME[name]
    model = LimitStateModel(problem)
    g = torch.Generator().manual_seed(seed)
    hits = 0
    with torch.no_grad():
        for start in range(0, n, batch):
            z = torch.randn(min(batch, n - start), problem.dim, generator=g, dtype=torch.float64)
            hits += int((model(z) > 0).sum())
    return hits


def clopper_pearson(hits: int, n: int) -> tuple[float, float]:
    low = stats.beta.ppf(0.025, hits, n - hits + 1) if hits > 0 else 0.0
    high = stats.beta.ppf(0.975, hits + 1, n - hits) if hits < n else 1.0
    return float(low), float(high)


MC_DRAWS = {"RP8": 200_000_000, "RP14": 200_000_000, "RP91": 200_000_000,
            "RP38": 100_000_000, "RP60": 100_000_000}


def mc(name: str) -> Checked:
    n = MC_DRAWS[name]
    hits = mc_hits(name, n, seed=12345)
    low, high = clopper_pearson(hits, n)
    return Checked(hits / n, low, high,
                   f"plain sampling: {hits:,} of {n:.0e} draws, Clopper-Pearson 95 %")


def check(name: str) -> Checked:
    if name in EXACT:
        return EXACT[name]()
    if name in QUAD1D:
        return quad1d(name)
    if name in MC_DRAWS:
        return mc(name)
    return quad2d(name)


def _log10(p: float) -> float:
    return math.log10(p) if p > 0 else -math.inf


def table_row(name: str, c: Checked) -> str:
    otb = OTBENCHMARK_P[name]
    off = otb / c.p - 1
    note = ""
    if not c.low * (1 - 1e-12) <= otb <= c.high * (1 + 1e-12):
        verdict = "DISAGREES" if abs(off) >= 0.01 else "outside the interval"
        note = f"    # {verdict}: otbenchmark's {otb:.6g} is off by {off:+.1e}\n"
    return (f'{note}    "{name}": Truth({_log10(c.p):.9f}, ({_log10(c.low):.9f}, {_log10(c.high):.9f}),\n'
            f'        "{c.source}", {otb!r}),')


def _rp75_by_1d() -> float:
    """P[z1 z2 > 3] = 2 int_0^inf phi(t) Phi(-3 / t) dt (RP75 in closed form up to one integral)."""
    half, _ = _quad(lambda t: stats.norm.pdf(t) * special.ndtr(-3.0 / t) if t > 0 else 0.0,
                    [0.0, 1.0, 3.0, 10.0, 40.0])
    return 2 * half


def mixture_is(name: str, means: list[list[float]], n: int, seed: int,
               batch: int = 1_000_000) -> tuple[float, float]:
    """Unbiased importance sampling from an equal mixture of N(m_k, I): (estimate, std error)."""
    model = LimitStateModel(PROBLEMS_BY_NAME[name])
    m = torch.tensor(means, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    total, total_sq = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, n, batch):
            b = min(batch, n - start)
            z = torch.randn(b, m.shape[1], generator=g, dtype=torch.float64)
            z = z + m[torch.randint(len(means), (b,), generator=g)]
            log_q = torch.logsumexp(-0.5 * ((z[:, None, :] - m) ** 2).sum(-1), dim=1) - math.log(len(means))
            w = torch.exp(-0.5 * (z**2).sum(1) - log_q) * (model(z)[:, 0] > 0)
            total, total_sq = total + float(w.sum()), total_sq + float((w**2).sum())
    mean = total / n
    return mean, math.sqrt(max(total_sq / n - mean**2, 0.0) / n)


IS_MEANS = {  # near each problem's design point(s) in standard space
    "RP25": [[2.4, 2.9]], "RP28": [[-3.84, -3.84], [-6.67, 0.0], [0.0, -6.67]],
    "RP77": [[-2.0, 4.0, 1.0]],
    "RP107": [[5 / math.sqrt(10)] * 10], "RP110": [[4.0, 0.0], [0.0, 5.0]],
    "RP111": [[a * 3.54, b * 3.54] for a in (-1, 1) for b in (-1, 1)],
}


def self_checks(checked: dict[str, Checked]) -> None:
    """Cross-checks of the methods themselves, printed as comments."""
    exact = {"R-S": checked["R-S"].p, "RP75": _rp75_by_1d()}
    for name, value in exact.items():
        q = quad2d(name)
        print(f"# quad2d on {name}: {q.p:.10e} vs {value:.10e} (exact / 1-D), "
              f"rel. diff {abs(q.p / value - 1):.1e}")
    for name, means in IS_MEANS.items():
        est, se = mixture_is(name, means, 10_000_000, seed=99)
        print(f"# mixture IS 1e7 on {name}: {est:.5e} +- {se:.1e} vs {checked[name].p:.5e}, "
              f"z = {(est - checked[name].p) / se:+.2f}")
    n = 10_000_000
    for i, (name, c) in enumerate(checked.items()):
        if name in MC_DRAWS or c.p < 1e-5:
            continue
        hits = mc_hits(name, n, seed=1000 + i)  # a stream per problem: errors independent
        z = (hits - n * c.p) / math.sqrt(n * c.p * (1 - c.p))
        print(f"# plain sampling 1e7 on {name}: {hits / n:.5e} vs {c.p:.5e}, z = {z:+.2f}", flush=True)


def main() -> None:
    torch.set_num_threads(1)
    started = time.perf_counter()
    checked: dict[str, Checked] = {}
    print("TRUTHS: dict[str, Truth] = {")
    for name in PROBLEMS_BY_NAME:
        t = time.perf_counter()
        checked[name] = check(name)
        print(table_row(name, checked[name]), flush=True)
        print(f"{name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    print("}")
    self_checks(checked)
    print(f"# total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
