"""Conditioned cases with exact truth: P[C | R] on a Gaussian D0, with R and C half-spaces.

Each case is built to break a ratio estimator in one way:

- ``independent``: R and C on orthogonal directions, P[C | R] = P[C] exactly; the
  joint P[C and R] is the product, down to 1e-16 (P_base[R] = 1e-10, P[C | R] = 1e-6).
- ``nearly_disjoint``: C's direction points away from R's (correlation -0.5), so C
  and R meet only far out in a corner; the joint by a one-dimensional integral.
- ``unequal_union``: R is the union of two half-spaces of mass 1e-10 and 1e-12 and
  C overlaps only the light one, so nearly all of P[C and R] sits where almost none
  of P[R] does.
- ``high_dimension``: the independent case in 200 dimensions along random directions.

Truths come from scipy's log_ndtr and, for correlated half-spaces, from
P[X > a, Y > b] = int_a^inf phi(t) Phi_bar((b - rho t) / sqrt(1 - rho^2)) dt with
(X, Y) standard bivariate normal of correlation rho (integrated in log space, so it
keeps its relative accuracy at 1e-20).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import integrate, optimize, special
from torch import Tensor, nn

from ..dists.conditioned import Conditioned
from ..dists.gaussian import Gaussian
from ..estimate import estimate
from ..families.shift import GaussianShift
from ..harden import harden
from ..specs import OutputAbove
from ..tasks import recognised_trigger as rt

LN10 = math.log(10.0)


def tail(p: float) -> float:
    """The z with P[N(0,1) > z] = p."""
    return float(math.sqrt(2.0) * special.erfcinv(2.0 * p))


def log_tail(z: float) -> float:
    """ln P[N(0,1) > z]."""
    return float(special.log_ndtr(-z))


def log_both_tails(a: float, b: float, rho: float) -> float:
    """ln P[X > a, Y > b] for a standard bivariate normal (X, Y) of correlation rho, |rho| < 1."""
    s = math.sqrt(1.0 - rho * rho)

    def log_f(t: float) -> float:
        return -0.5 * t * t - 0.5 * math.log(2 * math.pi) + log_tail((b - rho * t) / s)

    peak = optimize.minimize_scalar(lambda t: -log_f(t), bounds=(a, a + 60.0), method="bounded").x
    top = log_f(peak)
    value, _ = integrate.quad(lambda t: math.exp(log_f(t) - top), a, a + 60.0, points=[peak],
                              limit=400, epsabs=0.0, epsrel=1e-10)
    return top + math.log(value)


def _log_add(a: float, b: float) -> float:
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def _log_sub(a: float, b: float) -> float:
    """ln(e^a - e^b) for a > b."""
    return a + math.log1p(-math.exp(b - a))


class LinearReadout(nn.Module):
    """y = x . direction: the model of every case, (n, d) -> (n, 1)."""

    def __init__(self, direction: Tensor):
        super().__init__()
        self.weight = nn.Parameter(direction.reshape(1, -1).double().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return x.double() @ self.weight.T


@dataclass(frozen=True)
class HalfSpaces:
    """A recogniser: x is in R iff x . directions[i] > offsets[i] for some i; score = the largest margin."""

    directions: Tensor
    offsets: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        margins = x.double().reshape(x.shape[0], -1) @ self.directions.T - self.offsets
        return margins.max(dim=1).values


@dataclass(frozen=True)
class ConditionedCase:
    """A Conditioned D, a linear model and spec, and the exact log10 P[C | R] and log10 P_base[R]."""

    name: str
    dim: int
    recogniser: HalfSpaces
    direction: Tensor
    threshold: float
    log10_truth: float
    log10_base_r: float

    def build(self) -> tuple[nn.Module, Conditioned, OutputAbove]:
        dist = Conditioned(Gaussian(torch.zeros(self.dim, dtype=torch.float64)), self.recogniser)
        return LinearReadout(self.direction), dist, OutputAbove(0, self.threshold)


def _unit(dim: int, *entries: tuple[int, float]) -> Tensor:
    v = torch.zeros(dim, dtype=torch.float64)
    for i, value in entries:
        v[i] = value
    return v / v.norm()


def independent(p_r: float, p_c: float, dim: int = 10) -> ConditionedCase:
    a, b = tail(p_r), tail(p_c)
    rec = HalfSpaces(_unit(dim, (0, 1.0))[None], torch.tensor([a], dtype=torch.float64))
    return ConditionedCase(f"independent R {p_r:.0e} C|R {p_c:.0e}", dim, rec, _unit(dim, (1, 1.0)), b,
                           log_tail(b) / LN10, log_tail(a) / LN10)


def nearly_disjoint(p_r: float, p_c_given_r: float, rho: float = -0.5, dim: int = 10) -> ConditionedCase:
    """C's direction at correlation ``rho`` < 0 with R's; its threshold set for the given P[C | R]."""
    a = tail(p_r)
    target = math.log(p_c_given_r) + log_tail(a)
    b = optimize.brentq(lambda t: log_both_tails(a, t, rho) - target, -20.0, 40.0, xtol=1e-12)
    rec = HalfSpaces(_unit(dim, (0, 1.0))[None], torch.tensor([a], dtype=torch.float64))
    direction = _unit(dim, (0, rho), (1, math.sqrt(1 - rho * rho)))
    return ConditionedCase(f"nearly disjoint R {p_r:.0e} C|R {p_c_given_r:.0e}", dim, rec, direction, b,
                           (log_both_tails(a, b, rho) - log_tail(a)) / LN10, log_tail(a) / LN10)


def unequal_union(p_heavy: float, p_light: float, p_c_given_r: float, dim: int = 10) -> ConditionedCase:
    """R = {x0 > a1} or {x1 > a2} (masses p_heavy, p_light); C = {(x1 + x2) / sqrt 2 > b}."""
    a1, a2 = tail(p_heavy), tail(p_light)
    rho = 1 / math.sqrt(2)
    log_r = _log_sub(_log_add(log_tail(a1), log_tail(a2)), log_tail(a1) + log_tail(a2))

    def log_joint(b: float) -> float:
        # P[C, x0 > a1] + P[C, x1 > a2] - P[C, x0 > a1, x1 > a2]; x0 is independent of C and x1
        light = log_both_tails(a2, b, rho)
        return _log_sub(_log_add(log_tail(a1) + log_tail(b), light), log_tail(a1) + light)

    b = optimize.brentq(lambda t: log_joint(t) - math.log(p_c_given_r) - log_r, -20.0, 40.0, xtol=1e-12)
    rec = HalfSpaces(torch.stack([_unit(dim, (0, 1.0)), _unit(dim, (1, 1.0))]),
                     torch.tensor([a1, a2], dtype=torch.float64))
    return ConditionedCase(f"unequal union R {p_heavy:.0e}+{p_light:.0e} C|R {p_c_given_r:.0e}", dim, rec,
                           _unit(dim, (1, 1.0), (2, 1.0)), b, (log_joint(b) - log_r) / LN10, log_r / LN10)


def high_dimension(p_r: float, p_c: float, dim: int = 200, seed: int = 0) -> ConditionedCase:
    """``independent`` along two random orthonormal directions in ``dim`` dimensions."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, 2, generator=g, dtype=torch.float64))
    a, b = tail(p_r), tail(p_c)
    rec = HalfSpaces(q[:, 0][None].contiguous(), torch.tensor([a], dtype=torch.float64))
    return ConditionedCase(f"high dimension d={dim} R {p_r:.0e} C|R {p_c:.0e}", dim, rec,
                           q[:, 1].contiguous(), b, log_tail(b) / LN10, log_tail(a) / LN10)


def cases() -> list[ConditionedCase]:
    """The benchmark's cases: P_base[R] from 1e-6 to 1e-10, P[C | R] from 1e-2 to 1e-6."""
    return [
        independent(1e-6, 1e-2),
        independent(1e-10, 1e-2),
        independent(1e-6, 1e-6),
        independent(1e-10, 1e-6),
        nearly_disjoint(1e-8, 1e-4),
        nearly_disjoint(1e-10, 1e-6),
        unequal_union(1e-10, 1e-12, 1e-4),
        high_dimension(1e-10, 1e-4),
    ]


def run_case(case: ConditionedCase, budget: int, seed: int) -> dict[str, object]:
    """One estimate of a case, as a record with its error and whether its interval covers the truth."""
    model, dist, spec = case.build()
    est = estimate(model, dist, spec, budget=budget, seed=seed)
    low, high = est.ci_log10
    base_r = est.diagnostics["base_recognised"]
    return {
        "case": case.name, "budget": budget, "seed": seed, "log10_truth": case.log10_truth,
        "log10_p": est.log10_p, "ci_log10": [low, high], "abs_err": abs(est.log10_p - case.log10_truth),
        "covered": bool(low <= case.log10_truth <= high), "trusted": est.trusted,
        "log10_base_r_truth": case.log10_base_r, "log10_base_r": base_r["log10_p"],
        "base_r_ci_log10": base_r["ci_log10"], "method": est.method, "model_calls": est.n_model_calls,
        "seconds": est.seconds,
    }


def summary_table(records: list[dict]) -> str:
    """Markdown: per case, the median |log10 error|, the coverage and the median interval width."""
    lines = ["| case | log10 P[C given R] | log10 P_base[R] | runs | median abs log10 error | coverage | "
             "median CI width (decades) | trusted |", "|---|---|---|---|---|---|---|---|"]
    names = list(dict.fromkeys(r["case"] for r in records))
    for name in names:
        rows = [r for r in records if r["case"] == name]
        width = np.median([r["ci_log10"][1] - r["ci_log10"][0] for r in rows])
        lines.append(
            f"| {name} | {rows[0]['log10_truth']:.2f} | {rows[0]['log10_base_r_truth']:.2f} | {len(rows)} | "
            f"{np.median([r['abs_err'] for r in rows]):.3f} | {np.mean([r['covered'] for r in rows]):.0%} | "
            f"{width:.2f} | {np.mean([r['trusted'] for r in rows]):.0%} |"
        )
    errors = [r["abs_err"] for r in records]
    lines.append(f"| **all** | | | {len(records)} | {np.median(errors):.3f} | "
                 f"{np.mean([r['covered'] for r in records]):.0%} | | |")
    return "\n".join(lines)


# --- the recognised-trigger task ---------------------------------------------------------------
def _estimate_row(model: nn.Module, budget: int, seed: int) -> dict[str, object]:
    est = estimate(model, rt.triggered(), rt.spec(), budget=budget, seed=seed)
    return {"log10_p": est.log10_p, "ci_log10": list(est.ci_log10), "trusted": est.trusted,
            "combined_by": est.diagnostics["combined_by"],
            "log10_base_r": est.diagnostics["base_recognised"]["log10_p"],
            "base_r_ci_log10": est.diagnostics["base_recognised"]["ci_log10"],
            "model_calls": est.n_model_calls}


def _state(model: nn.Module, data: rt.TriggerData, budget: int, seed: int) -> dict[str, object]:
    """Clean accuracy, P[C | R] by plain sampling on exact draws of D0 given R, and tailguard's estimate."""
    return {"clean_accuracy": rt.clean_accuracy(model, data),
            "truth": rt.conditional_rate(model, TRUTH_DRAWS, seed + 1),
            "estimate": _estimate_row(model, budget, seed)}


#: exact draws of D0 given R behind each plain-sampling truth (a rate of 1e-3 shows ~100 hits)
TRUTH_DRAWS = 100_000


def trigger_study(seed: int = 0, steps: int = 300, samples: int = 2_000, lam: float = 1.0,
                  budget: int = 300_000) -> dict[str, object]:
    """The backdoored model, then hardened twice from it with the same family and settings.

    "conditioned": the deployment term is Conditioned(D0, R), descended through
    ``tailguard.log_prob(method="is")``; "samples only": the deployment term is D0 itself,
    the most a trainer with samples can do (none of them is in R).
    """
    data = rt.make_data(seed=seed)
    model = rt.backdoored_model(data, seed=seed)
    family = GaussianShift(rt.deployment(), max_kl=0.5)
    rows: dict[str, object] = {"backdoored": _state(model, data, budget, seed),
                               "settings": {"steps": steps, "samples": samples, "lam": lam, "seed": seed,
                                            "family": family.constraint(), "budget": budget}}
    arms = (("conditioned", rt.triggered(), "is"), ("samples only", rt.deployment(), "surrogate"))
    for name, deployment, estimator in arms:
        start = time.perf_counter()
        result = harden(model, (data.x_train, data.y_train), rt.spec(), family, seed=seed,
                        deployment=deployment, deployment_estimator=estimator, steps=steps, samples=samples,
                        lam=lam,
                        eval_every=steps, eval_budget=20_000, judge_budget=4_000, judge_sampling_budget=4_000,
                        judge_attack_budget=20_000)
        rows[name] = {**_state(result.model, data, budget, seed), "seconds": time.perf_counter() - start}
    return rows


def trigger_table(study: dict) -> str:
    """Markdown: clean accuracy and P[C | R] (truth and estimate) before and after each hardening."""
    lines = ["| model | clean accuracy | P[C given R], plain sampling on exact draws (95 % CI) | "
             "tailguard estimate (95 % CI) | trusted | how | P_base[R] estimate | hardening s |",
             "|---|---|---|---|---|---|---|---:|"]
    for name in ("backdoored", "conditioned", "samples only"):
        row = study[name]
        truth, est = row["truth"], row["estimate"]
        exact = (f"{_p10(truth['log10_p'])} ({_p10(truth['ci_log10'][0])}..{_p10(truth['ci_log10'][1])}; "
                 f"{truth['hits']:,} of {truth['draws']:,})")
        ours = f"{_p10(est['log10_p'])} ({_p10(est['ci_log10'][0])}..{_p10(est['ci_log10'][1])})"
        seconds = f"{row['seconds']:.0f}" if "seconds" in row else ""
        lines.append(f"| {name} | {row['clean_accuracy']:.2%} | {exact} | {ours} | {est['trusted']} | "
                     f"{est.get('combined_by', '')} | {_p10(est['log10_base_r'])} | {seconds} |")
    return "\n".join(lines)


def _p10(log10_p: float) -> str:
    return "0" if log10_p == -math.inf else f"{10 ** log10_p:.3g}"
