"""P[C | R] for a Conditioned D as the ratio P_base[C and R] / P_base[R], each term by rare-event methods.

Both terms are ordinary estimation problems on the base distribution, so they go
through the same estimators as any other (``auto`` by default):

- P_base[C and R] with the spec ``Both(spec, R)``, whose score is min(spec score,
  recogniser score): positive iff both are, and graded wherever both are.
- P_base[R] with the spec ``Recognised(R)`` on a stand-in for the model that is never
  evaluated for its output: this term costs recogniser calls, not model calls.

The interval of the ratio is the Bonferroni combination of the two terms' intervals,
each at level 1 - alpha / 2: [low_CR - high_R, high_CR - low_R] in log space (capped at
0, since C and R is inside R). It holds whatever the dependence between the two runs,
and it is trusted only if both are (docs/design/010-conditioned.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..dists.base import Distribution
from ..dists.conditioned import Conditioned
from ..errors import UnsupportedError
from ..oracle import ScoreOracle
from ..result import Estimate
from ..specs import Spec
from . import _space
from ._space import BaseSpace
from .importance import ImportanceSampling
from .splitting import Splitting

#: the share of the model calls spent on splitting on base given R (the rest: the joint term)
DIRECT_SHARE = 0.5
#: splitting's MCMC moves per particle and level on base given R: random-walk moves within a thin
#: R mix more slowly than pCN for base (3 moves: 0.3-1 decade spreads between seeds at 1e-6;
#: 10: within 0.03 on the independent case, seeds 0-2)
DIRECT_STEPS = 10
#: moves within R that each chain start makes after resampling the pool
BURN_IN = 20


class Recognised(Spec):
    """The recogniser's score as a spec on the input alone: "catastrophe" iff x is in R.

    ``soft`` is the exact log-indicator of R: R does not depend on the model, so there
    is nothing for a gradient to smooth, and a surrogate would leak mass from outside R.
    """

    def __init__(self, dist: Conditioned):
        self.dist = dist

    def score(self, x: Tensor, y: Tensor) -> Tensor:
        return self.dist.recognise(x)

    def soft(self, x: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
        inside = self.score(x, y) > 0
        return torch.where(inside, 0.0, -math.inf).double()

    def __repr__(self) -> str:
        return f"Recognised({self.dist!r})"


class Both(Spec):
    """C and R: score = min(spec score, recogniser score), > 0 iff both are."""

    def __init__(self, spec: Spec, recognised: Recognised):
        self.spec = spec
        self.recognised = recognised
        self.continuous = spec.continuous

    def score(self, x: Tensor, y: Tensor) -> Tensor:
        s = self.spec.score(x, y).double()
        return torch.minimum(s, self.recognised.score(x, y).to(s.device))

    def soft(self, x: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
        """The spec's surrogate inside R, -inf outside: gradients reach the model only through C."""
        soft = self.spec.soft(x, y, temperature).double()
        return soft + self.recognised.soft(x, y).to(soft.device)

    def check_output(self, y: Tensor) -> None:
        self.spec.check_output(y)

    def __repr__(self) -> str:
        return f"Both({self.spec!r}, {self.recognised!r})"


class RecogniserOnly(nn.Module):
    """Stands in for the model where only the recogniser matters: one constant output per row."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], 1)


class Within(Spec):
    """C for inputs in R, and -inf outside: splitting on it never leaves R (its levels are finite)."""

    def __init__(self, spec: Spec, recognised: Recognised):
        self.spec = spec
        self.recognised = recognised
        self.continuous = spec.continuous

    def score(self, x: Tensor, y: Tensor) -> Tensor:
        s = self.spec.score(x, y).double()
        inside = self.recognised.score(x, y).to(s.device) > 0
        return torch.where(inside, s, torch.full_like(s, -math.inf))

    def check_output(self, y: Tensor) -> None:
        self.spec.check_output(y)

    def __repr__(self) -> str:
        return f"Within({self.spec!r}, {self.recognised!r})"


class Restricted(Distribution):
    """base given R, for splitting with the spec ``Within``: chains started inside R that stay there.

    The chain starts are the final particles of a splitting run for P_base[R] (recogniser
    calls only), resampled and moved BURN_IN times within R (which also tunes ``scale``).
    For a base with base coordinates z (``_space``) the move is a random-walk Metropolis
    step for base, z' = z + b L xi, shaped by the covariance L L^T of those starts: base's
    own pCN would pull every chain back towards the centre of base and out of a far-away
    R at any useful step, and one step size for all directions cannot suit an R that is
    thin in one of them. (A pCN step around a Gaussian fit to the starts mixes faster in
    the bulk but sticks in any tail heavier than the fit's.)
    Other bases use their own move. Either is reversible for base, and splitting
    accepts a move only if it stays in the current level set, which ``Within`` puts
    inside R, so base given R is what stays invariant. No sampler, no normalised density.
    """

    def __init__(self, dist: Conditioned, start_budget: int):
        self.conditioned = dist
        self.base = dist.base
        self.event_shape = dist.event_shape
        self.start_budget = start_budget
        self.space = BaseSpace(dist.base) if _space.supports(dist.base) else None
        self.tril: Tensor | None = None
        #: the random-walk step at splitting's largest step (1), tuned during burn-in to an acceptance of
        #: about 0.3: splitting cannot see a Metropolis-Hastings rejection (the chain stays put,
        #: inside its level set), so it would otherwise grow the step until nothing moves
        self.scale = 0.3
        self.start_diagnostics: dict[str, Any] = {}

    @property
    def is_discrete(self) -> bool:
        return self.base.is_discrete

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.conditioned.sample(n, generator)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.conditioned.log_prob(x)

    def propose(self, x: Tensor, step: Tensor, generator: torch.Generator) -> Tensor:
        if self.space is None or self.tril is None:
            return self.base.propose(x, step, generator)
        space = self.space
        with torch.no_grad():
            z = space.to_z(x)
            b = self.scale * step.double().reshape(-1, 1)
            z_new = z + b * (torch.randn(z.shape, generator=generator, dtype=torch.float64) @ self.tril.T)
            log_ratio = space.base_log_prob(z_new) - space.base_log_prob(z)
            accept = torch.log(torch.rand(z.shape[0], generator=generator, dtype=torch.float64)) < log_ratio
            return space.to_x(torch.where(accept[:, None], z_new, z))

    def _fit_starts(self, pool: Tensor) -> None:
        """The Cholesky factor of the pool's covariance in base coordinates (diagonal if few)."""
        assert self.space is not None
        z = self.space.to_z(pool)
        d = z.shape[1]
        if z.shape[0] > 4 * d:
            cov = torch.cov(z.T).reshape(d, d) + 1e-6 * torch.eye(d, dtype=torch.float64)
        else:
            cov = torch.diag(z.var(0) + 1e-6) if z.shape[0] > 1 else torch.eye(d, dtype=torch.float64)
        self.tril = torch.linalg.cholesky(cov)

    def chain_starts(self, n: int, generator: torch.Generator) -> Tensor:
        oracle = ScoreOracle(RecogniserOnly(), self.base, Recognised(self.conditioned))
        outcome, pool = Splitting().run_with_draws(oracle, self.start_budget, generator, 0.95)
        self.start_diagnostics = {"pool": int(pool.shape[0]), "recogniser_calls": oracle.n_calls,
                                  "log10_base_r": outcome.log_p / math.log(10)}
        if pool.shape[0] == 0:
            raise UnsupportedError("splitting found no recognised input of base to start the chains from; "
                                   "raise budget or give the recogniser a graded score")
        if self.space is not None:
            self._fit_starts(pool)
        x = pool[torch.randint(pool.shape[0], (n,), generator=generator)]
        full = torch.ones(n, dtype=torch.float64)
        for _ in range(BURN_IN):
            moved = self.propose(x, full, generator)
            ok = self.conditioned.recognise(moved) > 0
            went = ok & (moved != x).reshape(n, -1).any(1)
            x = torch.where(ok.reshape(-1, *([1] * (x.dim() - 1))), moved, x)
            self.scale = min(self.scale * math.exp(float(went.double().mean()) - 0.3), 1.0)
        self.start_diagnostics["recogniser_calls"] += BURN_IN * n
        return x


@dataclass(frozen=True)
class Routes:
    """The estimates P[C | R] is made from.

    joint, recognised: P_base[C and R] and P_base[R], each at the Bonferroni level.
    direct: P[C | R] by splitting on base given R (None when base has no MCMC move).
    """

    joint: Estimate
    recognised: Estimate
    direct: Estimate | None


def term_confidence(confidence: float) -> float:
    """The level of each term's interval so that the ratio's holds at ``confidence`` (Bonferroni)."""
    return 1.0 - (1.0 - confidence) / 2.0


def estimate_conditioned(run: Callable[..., Estimate], model: nn.Module, dist: Conditioned, spec: Spec,
                         method: str, budget: int, seeded: tuple[torch.Generator, int | None],
                         confidence: float, progress: bool, settings: dict[str, Any]) -> Estimate:
    """P[C | R] with its interval, each part by ``run`` (``tailguard.estimate``) on the base distribution.

    ``budget`` bounds the model calls (split between the direct route and the joint
    term) and, separately, the recogniser's calls for P_base[R] and for the chain
    starts; ``seeded`` is (generator, the seed it came from or None).
    """
    generator, seed_value = seeded
    seeds = [int(v) for v in torch.randint(0, 2**31 - 1, (3,), generator=generator)]
    level = term_confidence(confidence)
    recognised = Recognised(dist)
    direct_budget = int(DIRECT_SHARE * budget) if dist.base.has_moves else 0
    direct = None
    if direct_budget >= Splitting(n_steps=DIRECT_STEPS).min_budget():
        direct = run(model, Restricted(dist, budget // 2), Within(spec, recognised), "splitting",
                     direct_budget, seeds[2], confidence, progress, backend=settings.get("backend", "local"),
                     n_steps=DIRECT_STEPS)
    routes = Routes(
        joint=run(model, dist.base, Both(spec, recognised), method, budget - direct_budget, seeds[0], level,
                  progress, **settings),
        recognised=run(RecogniserOnly(), dist.base, recognised, method, budget, seeds[1], level, progress,
                       **settings),
        direct=direct,
    )
    return _combine(routes, confidence, seed_value, method)


def _ratio(joint: Estimate, rec: Estimate) -> tuple[float, float, float, list[str]]:
    """log10 of P[C and R] / P[R] and its Bonferroni interval (point, low, high), with warnings."""
    warnings = [f"P[C and R]: {w}" for w in joint.warnings] + [f"P_base[R]: {w}" for w in rec.warnings]
    if rec.log10_p == -math.inf:
        warnings.append("no recognised input was found, so P[C | R] is undetermined: the interval is [0, 1]")
        return -math.inf, -math.inf, 0.0, warnings
    point = min(joint.log10_p - rec.log10_p, 0.0)
    low = min(joint.ci_log10[0] - rec.ci_log10[1], point)
    return point, low, min(joint.ci_log10[1] - rec.ci_log10[0], 0.0), warnings


def _usable(est: Estimate | None) -> bool:
    return (est is not None and est.trusted and not est.heuristic and math.isfinite(est.log10_p)
            and math.isfinite(est.ci_log10[0]))


def _combine(routes: Routes, confidence: float, seed: int | None, method: str) -> Estimate:
    """The direct route's result when it is usable and the ratio's interval meets it; otherwise see below.

    The two routes fail differently: splitting on base given R can stall in a part of
    R its chains do not reach, while the ratio's terms carry errors that grow with how
    rare C and R is. When they disagree the result spans both and is not trusted;
    with no usable direct route it is the ratio with its Bonferroni interval.
    """
    joint, rec, direct = routes.joint, routes.recognised, routes.direct
    point, low, high, warnings = _ratio(joint, rec)
    trusted, heuristic = joint.trusted and rec.trusted, joint.heuristic or rec.heuristic
    combined_by = "ratio (bonferroni)"
    assumes = (f"each term's interval at {term_confidence(confidence):.1%} (Bonferroni); "
               f"P[C and R]: {joint.assumes or 'see its method'}; "
               f"P_base[R]: {rec.assumes or 'see its method'}")
    if direct is not None:
        warnings += [f"direct: {w}" for w in direct.warnings]
    if direct is not None and _usable(direct):
        d_low, d_high = direct.ci_log10
        if low <= d_high and d_low <= high:
            point, low, high, trusted, heuristic = direct.log10_p, d_low, d_high, True, False
            combined_by, assumes = "direct, checked by the ratio", direct.assumes
        else:
            warnings.append(f"splitting on base given R ({_p(d_low)}..{_p(d_high)}) and the ratio of the two "
                            f"terms ({_p(low)}..{_p(high)}) disagree: the interval spans both")
            point, low, high = direct.log10_p, min(low, d_low), max(high, d_high)
            trusted, combined_by = False, "span of direct and ratio"
    return Estimate(
        log10_p=point,
        ci_log10=(low, high),
        n_model_calls=joint.n_model_calls + (direct.n_model_calls if direct is not None else 0),
        method="conditioned",
        seconds=joint.seconds + rec.seconds + (direct.seconds if direct is not None else 0.0),
        confidence=confidence,
        seed=seed,
        settings={"method": method, "term_confidence": term_confidence(confidence),
                  "direct_share": DIRECT_SHARE},
        diagnostics={
            "combined_by": combined_by,
            "joint": _summary(joint),
            "base_recognised": {**_summary(rec), "recogniser_calls": rec.n_model_calls},
            "direct": None if direct is None else _summary(direct),
        },
        warnings=tuple(warnings),
        heuristic=heuristic,
        trusted=trusted,
        assumes=assumes,
    )


def _p(log10_p: float) -> str:
    return f"1e{log10_p:.2f}"


def _summary(est: Estimate) -> dict[str, Any]:
    return {"log10_p": est.log10_p, "ci_log10": list(est.ci_log10), "method": est.method,
            "confidence": est.confidence, "trusted": est.trusted, "heuristic": est.heuristic,
            "model_calls": est.n_model_calls}


def log_prob_conditioned(model: nn.Module, dist: Conditioned, spec: Spec, method: str, budget: int,
                         generator: torch.Generator, settings: dict[str, Any]) -> Tensor:
    """ln P[C | R] = ln P_base[C and R] - ln P_base[R], both by importance sampling on fixed draws.

    The first term carries gradients to the model (through the spec's surrogate inside
    R); both carry gradients to base's parameters. Each term adapts its own proposal.
    """
    if method != "is":
        raise UnsupportedError(
            f"method {method!r} cannot differentiate P[C | R] for a Conditioned D; use 'is'"
        )
    estimator = ImportanceSampling(**settings)
    recognised = Recognised(dist)
    reason = estimator.unsupported_reason(model, dist.base, Both(spec, recognised))
    if reason is not None:
        raise UnsupportedError(f"method 'is' cannot be used on this Conditioned D's base: {reason}")
    joint = estimator.log_prob(model, dist.base, Both(spec, recognised), budget, generator)
    base_r = estimator.log_prob(RecogniserOnly(), dist.base, recognised, budget, generator)
    if not math.isfinite(float(base_r.detach())):
        raise UnsupportedError("importance sampling found no recognised input of base, so ln P[C | R] "
                               "is undetermined; raise budget or give the recogniser a graded score")
    return joint - base_r

