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

import hashlib
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from .._logspace import LN10
from ..dists.base import Distribution
from ..dists.conditioned import Conditioned
from ..dists.gaussian import Gaussian
from ..errors import UnsupportedError
from ..oracle import ScoreOracle
from ..result import Estimate
from ..specs import Spec
from . import _space
from ._space import BaseSpace
from .base import build
from .conditioned_bound import ZeroHitBound, zero_hit_bound
from .importance import ImportanceSampling
from .splitting import Splitting

#: the share of the model calls spent on splitting on base given R (the rest: the joint term)
DIRECT_SHARE = 0.5
#: the share of the joint term's calls that go to the zero-hit bound when the direct route saw no catastrophe
#: (the joint term then has no hit to find either unless the direct route's chains missed part of C and R)
BOUND_SHARE = 0.75
#: splitting's MCMC moves per particle and level on base given R: moves confined to a thin R mix
#: more slowly than pCN for base alone (3 moves: 0.3-1 decade spreads between seeds at 1e-6; 10:
#: within 0.2 on the independent and nearly disjoint cases, seeds 0-2)
DIRECT_STEPS = 10
#: draws of base given R that the differentiable log_prob fits its proposal to, the fewest recogniser
#: calls its chain starts may spend, and how much it widens the fitted covariance (heavier-tailed than
#: base given R, so that the weights stay bounded where the fit is too narrow)
PROPOSAL_FIT_DRAWS = 2_000
MIN_START_BUDGET = 100_000
PROPOSAL_WIDENING = 1.5
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
    calls only), resampled and moved within R. Two moves are tried during that burn-in
    and the one with the larger expected squared jump is kept: base's own move (pCN for
    a Gaussian: dimension-free, but it pulls chains back towards base's centre, so only
    small steps stay in a far R) and, for a base with base coordinates z (``_space``), a
    random-walk Metropolis step z' = z + b L xi shaped by the covariance L L^T of the
    starts (suits an R thin in one direction; its cost grows with the dimension).
    Measured on bench.conditioned: the walk wins in 10 dimensions, pCN in 200. Either is
    reversible for base, and splitting accepts a move only if it stays in the current
    level set, which ``Within`` puts inside R, so base given R is what stays invariant.
    No sampler, no normalised density.
    """

    def __init__(self, dist: Conditioned, start_budget: int):
        self.conditioned = dist
        self.base = dist.base
        self.event_shape = dist.event_shape
        self.start_budget = start_budget
        self.space = BaseSpace(dist.base) if _space.supports(dist.base) else None
        self.tril: Tensor | None = None
        #: whether the random walk moved further than base's own move during burn-in
        self.walk = False
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
        if self.space is None or self.tril is None or not self.walk:
            return self.base.propose(x, step, generator)
        return self._walk(x, self.scale * step, generator)

    def _walk(self, x: Tensor, b: Tensor, generator: torch.Generator) -> Tensor:
        """Random-walk Metropolis for base in base coordinates, z' = z + b L xi; b (n,)."""
        assert self.space is not None and self.tril is not None
        space = self.space
        with torch.no_grad():
            z = space.to_z(x)
            xi = torch.randn(z.shape, generator=generator, dtype=torch.float64) @ self.tril.T
            z_new = z + b.double().reshape(-1, 1) * xi
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

    def chain_starts(self, runs: int, n: int, generator: torch.Generator) -> Tensor:
        """runs blocks of n starts; block r resamples the particles of one run of the P_base[R] splitting.

        Each run of that splitting is independent of the others, so blocks drawn from
        different ones keep the runs they start independent (splitting's interval is
        their spread); with more blocks than runs, runs are reused in turn.
        """
        oracle = ScoreOracle(RecogniserOnly(), self.base, Recognised(self.conditioned))
        outcome, pool, run_of = Splitting().run_with_draws(oracle, self.start_budget, generator, 0.95)
        self.start_diagnostics = {"pool": int(pool.shape[0]), "recogniser_calls": oracle.n_calls,
                                  "log10_p": outcome.log_p / LN10, "ci_log10": [v / LN10 for v in outcome.ci],
                                  "trusted": outcome.trusted and not outcome.heuristic}
        if pool.shape[0] == 0:
            raise UnsupportedError("splitting found no recognised input of base to start the chains from; "
                                   "raise budget or give the recogniser a graded score")
        if self.space is not None:
            self._fit_starts(pool)
        sources = [torch.nonzero(run_of == r).flatten() for r in torch.unique(run_of).tolist()]
        x = torch.cat([pool[src[torch.randint(src.numel(), (n,), generator=generator)]]
                       for src in (sources[b % len(sources)] for b in range(runs))])
        n = x.shape[0]
        if self.space is None:
            x, _ = self._burn_in(x, False, generator)
            self.start_diagnostics["recogniser_calls"] += BURN_IN * n
            return x
        x, walk_jump = self._burn_in(x, True, generator)
        x, own_jump = self._burn_in(x, False, generator)
        self.walk = walk_jump > own_jump
        self.start_diagnostics.update({"move": "walk" if self.walk else "base", "walk_jump": walk_jump,
                                       "base_jump": own_jump})
        self.start_diagnostics["recogniser_calls"] += 2 * BURN_IN * n
        return x

    def _burn_in(self, x: Tensor, walk: bool, generator: torch.Generator) -> tuple[Tensor, float]:
        """BURN_IN moves within R by one kernel, tuning its step; returns the draws and its squared jump.

        The jump is the mean squared distance moved per step in base coordinates over
        the second half (rejections count as 0): the expected squared jumping distance
        by which the two kernels are compared (Pasarica & Gelman 2010). The walk's
        rejections are invisible to splitting, so its ``scale`` is tuned here; base's own
        move is rejected only by R, which splitting sees and tunes itself.
        """
        n = x.shape[0]
        log_step, jumps = 0.0 if walk else math.log(0.3), []  # the walk's scale is its step at step 1
        for i in range(BURN_IN):
            step = torch.full((n,), math.exp(log_step), dtype=torch.float64)
            moved = self._walk(x, self.scale * step, generator) if walk else self.base.propose(x, step,
                                                                                               generator)
            ok = self.conditioned.recognise(moved) > 0
            moved = torch.where(ok.reshape(-1, *([1] * (x.dim() - 1))), moved.to(x.dtype), x)
            went = (moved != x).reshape(n, -1).any(1)
            if i >= BURN_IN // 2 and self.space is not None:
                jumps.append(float(((self.space.to_z(moved) - self.space.to_z(x)) ** 2).sum(1).mean()))
            x = moved
            rate = float(went.double().mean())
            if walk:
                self.scale = min(self.scale * math.exp(rate - 0.3), 1.0)
            else:
                log_step = min(log_step + rate - 0.3, 0.0)
        return x, float(sum(jumps) / len(jumps)) if jumps else 0.0


@dataclass(frozen=True)
class Routes:
    """The estimates P[C | R] is made from.

    joint, recognised: P_base[C and R] and P_base[R], each at the Bonferroni level.
    direct: P[C | R] by splitting on base given R (None when base has no MCMC move).
    starts: the last splitting run for P_base[R] that started the direct route's chains.
    bound: the zero-hit bound, made when the direct route saw no catastrophe.
    """

    joint: Estimate
    recognised: Estimate
    direct: Estimate | None
    starts: dict[str, Any]
    bound: ZeroHitBound | None = None


def term_confidence(confidence: float) -> float:
    """The level of each term's interval so that the ratio's holds at ``confidence`` (Bonferroni)."""
    return 1.0 - (1.0 - confidence) / 2.0


def estimate_conditioned(run: Callable[..., Estimate], model: nn.Module, dist: Conditioned, spec: Spec,
                         method: str, budget: int, seeded: tuple[torch.Generator, int | None],
                         confidence: float, progress: bool, backend: Any,
                         settings: dict[str, Any]) -> Estimate:
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
    if method != "auto" and budget - direct_budget < build(method, settings).min_budget():
        direct_budget = 0  # too small to share: the ratio alone
    direct, restricted = None, Restricted(dist, budget // 2)
    refused: tuple[str, ...] = ()
    if direct_budget >= Splitting(n_steps=DIRECT_STEPS).min_budget():
        try:
            direct = run(model, restricted, Within(spec, recognised), "splitting",
                         direct_budget, seeds[2], confidence, progress, backend=backend, n_steps=DIRECT_STEPS)
        except UnsupportedError as exc:  # no chain start inside R: the ratio alone
            refused = (f"direct route refused: {exc}",)
    joint_budget, bound = budget - direct_budget, None
    if direct is not None and direct.log10_p == -math.inf and _space.supports(dist.base):
        # splitting within R saw no catastrophe: most of the joint term's calls go to the zero-hit bound
        space = BaseSpace(dist.base)
        bound_generator = torch.Generator().manual_seed(seeds[2] + 1)
        with torch.no_grad():
            fitted = fitted_proposal(dist, space, max(budget // 2, MIN_START_BUDGET), bound_generator)
        share = int(BOUND_SHARE * joint_budget)
        if method == "auto" or joint_budget - share >= build(method, settings).min_budget():
            bound = zero_hit_bound(model, dist, spec, space, fitted, share, bound_generator, confidence)
            joint_budget -= bound.model_calls
    routes = Routes(
        joint=run(model, dist.base, Both(spec, recognised), method, joint_budget, seeds[0], level,
                  progress, backend=backend, **settings),
        recognised=run(RecogniserOnly(), dist.base, recognised, method, budget, seeds[1], level, progress,
                       **settings),
        direct=direct,
        starts=restricted.start_diagnostics,
        bound=bound,
    )
    result = _combine(routes, confidence, seed_value, method)
    return replace(result, warnings=(*result.warnings, *refused)) if refused else result


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
    bound = routes.bound
    if bound is not None and bound.log10_high is not None and point == -math.inf and bound.log10_high < high:
        high, trusted, heuristic = bound.log10_high, True, False
        combined_by, assumes = "zero-hit bound", bound.assumes()
        warnings.append(f"no catastrophe in R: P[C | R] <= {_p(bound.log10_high)} from {bound.draws:,} draws "
                        f"of a proposal fitted to base given R ({bound.recognised:,} of them in R)")
    elif bound is not None and bound.log10_high is None:
        warnings.append(f"zero-hit bound refused: {bound.reason}")
    return Estimate(
        log10_p=point,
        ci_log10=(low, high),
        n_model_calls=(joint.n_model_calls + (direct.n_model_calls if direct is not None else 0)
                       + (bound.model_calls if bound is not None else 0)),
        method="conditioned",
        seconds=joint.seconds + rec.seconds + (direct.seconds if direct is not None else 0.0),
        confidence=confidence,
        seed=seed,
        settings={"method": method, "term_confidence": term_confidence(confidence),
                  "direct_share": DIRECT_SHARE},
        diagnostics={
            "combined_by": combined_by,
            "joint": _summary(joint),
            "base_recognised": _base_recognised(rec, routes.starts),
            "chain_starts": routes.starts,
            "direct": None if direct is None else _summary(direct),
            "zero_hit_bound": None if bound is None else bound.diagnostics(),
        },
        warnings=tuple(warnings),
        heuristic=heuristic,
        trusted=trusted,
        assumes=assumes,
    )


def _p(log10_p: float) -> str:
    return f"1e{log10_p:.2f}"


def _base_recognised(rec: Estimate, starts: dict[str, Any]) -> dict[str, Any]:
    """P_base[R] with its CI: the ratio's term, or the chain starts' splitting run when only it found R.

    (The term's ``auto`` gives up on R beyond the failure-mode search's reach and then
    has only a bound; the chain starts' splitting run climbs R's score all the way.)
    """
    term = {**_summary(rec), "recogniser_calls": rec.n_model_calls, "from": "ratio term"}
    if math.isfinite(rec.log10_p) or not starts or not math.isfinite(starts["log10_p"]):
        return term
    return {"log10_p": starts["log10_p"], "ci_log10": starts["ci_log10"], "method": "splitting",
            "trusted": starts["trusted"], "recogniser_calls": starts["recogniser_calls"],
            "from": "chain starts", "ratio_term": term}


def _summary(est: Estimate) -> dict[str, Any]:
    return {"log10_p": est.log10_p, "ci_log10": list(est.ci_log10), "method": est.method,
            "confidence": est.confidence, "trusted": est.trusted, "heuristic": est.heuristic,
            "model_calls": est.n_model_calls}


#: the last proposal fitted to base given R, per Conditioned D, with the fingerprint it was fitted under
_PROPOSALS: weakref.WeakKeyDictionary[Conditioned, tuple[str, Gaussian]] = weakref.WeakKeyDictionary()


def fingerprint(dist: Conditioned, start_budget: int) -> str:
    """What base given R and its chain starts depend on: base's type and tensors, the recogniser's
    weights (an nn.Module) or identity (a function), and the recogniser calls the starts may spend.

    The model is not in it: base given R does not depend on the model being trained.
    """
    digest = hashlib.sha256(f"{type(dist.base).__qualname__}|{start_budget}|".encode())
    tensors = sorted((k, v) for k, v in vars(dist.base).items() if isinstance(v, Tensor))
    if isinstance(dist.recogniser, nn.Module):
        tensors += sorted(dist.recogniser.state_dict().items())
    else:
        digest.update(f"recogniser {id(dist.recogniser)}".encode())
    for name, t in tensors:
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def fitted_proposal(dist: Conditioned, space: BaseSpace, start_budget: int,
                    generator: torch.Generator) -> Gaussian:
    """A Gaussian in base coordinates fitted to draws of base given R, covariance widened.

    The draws (a P_base[R] splitting run and burn-in within R: ``start_budget`` and more
    recogniser calls) depend only on base and R, so the fit is kept per D and reused
    while its ``fingerprint`` holds: a hardening run calls ``log_prob`` at every step
    with the same D, and refitting each time cost ~80 % of that run's time. The fit
    draws from a generator seeded from ``generator`` (one number taken whether or not
    the fit is reused), so the caller's later draws do not depend on the cache.
    """
    own = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    key = fingerprint(dist, start_budget)
    cached = _PROPOSALS.get(dist)
    if cached is not None and cached[0] == key:
        return cached[1]
    starts = space.to_z(Restricted(dist, start_budget).chain_starts(1, PROPOSAL_FIT_DRAWS, own))
    d = starts.shape[1]
    jitter = 1e-6 * torch.eye(d, dtype=torch.float64)
    cov = PROPOSAL_WIDENING * (torch.cov(starts.T).reshape(d, d) + jitter)
    q = Gaussian(starts.mean(0), cov=0.5 * (cov + cov.T))
    _PROPOSALS[dist] = (key, q)
    return q


def log_prob_conditioned(model: nn.Module, dist: Conditioned, spec: Spec, method: str, budget: int,
                         generator: torch.Generator, settings: dict[str, Any]) -> Tensor:
    """ln P[C | R] by self-normalised importance sampling from a proposal fitted to draws of base given R.

    The draws of base given R come from ``Restricted.chain_starts`` (recogniser calls
    only); a Gaussian q fitted to them in base coordinates (covariance widened by
    PROPOSAL_WIDENING; fitted once per D, ``fitted_proposal``) then gives ``budget``
    fixed draws, and with w = p_base / q

        ln P[C | R] ~ ln sum(w 1_R soft_C) - ln sum(w 1_R),

    numerator and denominator on the same draws (the ratio of P_base[C and R] to
    P_base[R], sharing draws). The model is called only on the draws inside R; the
    gradient reaches it through the spec's surrogate, and base's parameters through
    p_base. It stays usable when P[C | R] is near 1, where an adapted proposal for C
    and R alone would be one for R anyway, and costs no adaptation in model calls.
    """
    if method != "is":
        raise UnsupportedError(
            f"method {method!r} cannot differentiate P[C | R] for a Conditioned D; use 'is'"
        )
    temperature = ImportanceSampling(**settings).temperature
    if not _space.supports(dist.base) or not dist.base.has_moves:
        raise UnsupportedError(f"method 'is' needs a base with base coordinates and MCMC moves (a Gaussian, "
                               f"noisy empirical or unnormalised D), got {type(dist.base).__name__}")
    space = BaseSpace(dist.base)
    with torch.no_grad():
        q = fitted_proposal(dist, space, max(budget, MIN_START_BUDGET), generator)
        z = q.sample(budget, generator)
        log_q = q.log_prob(z) + space.log_jac
    x = space.to_x(z)
    inside = dist.recognise(x) > 0
    if not bool(inside.any()):
        raise UnsupportedError("no draw of the proposal fitted to base given R was recognised; raise budget")
    x_in = x[inside]
    log_w = dist.base.log_prob(x_in).double() - log_q[inside]
    y = ScoreOracle(model, dist.base, spec).outputs(x_in)
    soft = spec.soft(x_in, y, temperature).double()
    return torch.logsumexp(log_w + soft, 0) - torch.logsumexp(log_w, 0)
