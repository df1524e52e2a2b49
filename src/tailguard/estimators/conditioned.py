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
from .restricted import Both, Recognised, RecogniserOnly, Restricted, Within
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
