"""Importance sampling of an LM-written D with another LM distribution as the proposal.

Two forms: ``estimate_with_proposal`` for a spec (catastrophe iff score > 0, e.g. the
policy's most likely reply starts with a forbidden token), and
``expected_forbidden_mass`` for a policy whose reply is *sampled*: there the
catastrophe probability of an input is the policy's probability mass on the
forbidden first tokens, pi(x), and P = E_D[pi(x)] is estimated as mean(w * pi),
which has less variance than sampling the reply (Rao-Blackwell).

An adversary that writes inputs with exact sequence log-probabilities (a prompted
or fine-tuned LM) is a ready-made proposal for the deployment distribution D when
both write token sequences of the same length: p_D[C] = E_q[(p_D / q) 1[C]]. The
proposal is used as a defensive mixture (1 - share) q + share * D (Hesterberg 1995),
so every weight is at most 1 / share and what q never writes is still sampled
through D, and the result reports the effective sample size of the weights.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from .._logspace import binomial_log_ci, ess, logmeanexp, normal_log_ci, pareto_k, to_log10
from ..dists.lm import LMDistribution
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..estimate import make_generator
from ..oracle import ScoreOracle
from ..result import Estimate
from ..specs import Spec

PARETO_K_LIMIT = 0.7


def mixture_log_prob(x: Tensor, target: LMDistribution, proposal: LMDistribution, share: float) -> Tensor:
    """log((1 - share) q(x) + share p_D(x)) (n,), float64."""
    with torch.no_grad():
        log_q = proposal.log_prob(x) + math.log1p(-share)
        log_d = target.log_prob(x) + math.log(share)
    return torch.logaddexp(log_q, log_d)


def defensive_draws(target: LMDistribution, proposal: LMDistribution, n: int, share: float,
                    generator: torch.Generator) -> tuple[Tensor, Tensor, int]:
    """n draws (n, length) of (1 - share) proposal + share target, log target/mixture (n,), and how
    many of them (the last rows) are the target's own, plain draws of D."""
    if proposal.length != target.length:
        raise ShapeMismatchError(
            f"target writes {target.length} tokens but the proposal writes {proposal.length}"
        )
    if not 0.0 < share < 1.0:
        raise InvalidArgumentError(f"defensive_share must be in (0, 1), got {share!r}")
    from_d = int(torch.binomial(torch.tensor(float(n)), torch.tensor(share), generator=generator))
    x = torch.cat([proposal.sample(n - from_d, generator), target.sample(from_d, generator)])
    with torch.no_grad():
        log_w = target.log_prob(x) - mixture_log_prob(x, target, proposal, share)
    return x, log_w, from_d


def estimate_with_proposal(model: nn.Module, target: LMDistribution, proposal: LMDistribution, spec: Spec,
                           n: int, seed: int | torch.Generator = 0, defensive_share: float = 0.1,
                           confidence: float = 0.95) -> Estimate:
    """P_{x~target}[C(x, model(x))] from ``n`` draws of the defensive mixture of ``proposal`` and D."""
    if not isinstance(target, LMDistribution) or not isinstance(proposal, LMDistribution):
        raise InvalidArgumentError("target and proposal must both be LMDistribution")
    if not isinstance(n, int) or n < 2:
        raise InvalidArgumentError(f"n must be an int >= 2, got {n!r}")
    generator, seed_value = make_generator(seed)
    start = time.perf_counter()
    x, log_w, from_d = defensive_draws(target, proposal, n, defensive_share, generator)
    oracle = ScoreOracle(model, target, spec)
    hit = oracle.scores(x) > 0
    terms = torch.where(hit, log_w, torch.full_like(log_w, -math.inf))
    diagnostics = {"hits": int(hit.sum()), "draws": n,
                   "ess_all": ess(log_w), "proposal": repr(proposal)}
    warnings: tuple[str, ...] = ()
    if not bool(hit.any()):
        # the tighter of two bounds that hold whatever C is: the exact one of the plain draws of D,
        # and p = E_mix[w 1[C]] <= max w * P_mix[C] <= P_mix[C] / share from all of them
        mixture_bound = binomial_log_ci(0, n, confidence)[1] - math.log(defensive_share)
        plain_bound = binomial_log_ci(0, from_d, confidence)[1] if from_d else 0.0
        log_p, ci = -math.inf, (-math.inf, min(mixture_bound, plain_bound, 0.0))
        diagnostics["plain_draws"] = from_d
        warnings = (f"no catastrophe in {n:,} draws ({from_d:,} of them plain draws of D): only an upper "
                    "bound",)
    else:
        log_p = float(logmeanexp(terms))
        rel_var = max(math.expm1(float(logmeanexp(2 * terms)) - 2 * log_p), 0.0)
        ci = normal_log_ci(log_p, math.sqrt(rel_var / n), confidence)
        k_hat = pareto_k(terms)
        diagnostics.update({"ess": ess(terms), "pareto_k": None if math.isnan(k_hat) else k_hat})
        if k_hat > PARETO_K_LIMIT:
            warnings = (f"importance weights are heavy-tailed (Pareto k = {k_hat:.2f}): the CI cannot "
                        "be trusted",)
    return Estimate(
        log10_p=to_log10(log_p), ci_log10=(to_log10(ci[0]), to_log10(ci[1])),
        n_model_calls=oracle.n_calls, method="lm-proposal-is", seconds=time.perf_counter() - start,
        confidence=confidence, seed=seed_value, settings={"defensive_share": defensive_share},
        diagnostics=diagnostics, warnings=warnings,
    )


def forbidden_mass(logits: Tensor, token_ids: list[int], temperature: float = 1.0) -> Tensor:
    """The probability (n,) that a reply sampled from next-token logits (n, vocab) starts in token_ids."""
    return torch.softmax(logits.double() / temperature, dim=-1)[:, token_ids].sum(1)


def expected_forbidden_mass(policy: nn.Module, target: LMDistribution, token_ids: list[int], n: int,
                            proposal: LMDistribution | None = None, seed: int | torch.Generator = 0,
                            defensive_share: float = 0.2, confidence: float = 0.95,
                            batch_size: int = 64) -> Estimate:
    """E_{x~target}[pi(x)], pi = P(the policy's sampled first reply token is in token_ids).

    Without a proposal: plain sampling from ``target``. With one: draws from the defensive
    mixture of ``proposal`` and ``target``, weighted by target / mixture.
    """
    if not isinstance(n, int) or n < 2:
        raise InvalidArgumentError(f"n must be an int >= 2, got {n!r}")
    if not token_ids:
        raise InvalidArgumentError("token_ids must not be empty")
    generator, seed_value = make_generator(seed)
    start = time.perf_counter()
    if proposal is None:
        x = target.sample(n, generator)
        log_w = torch.zeros(n, dtype=torch.float64)
    else:
        x, log_w, _ = defensive_draws(target, proposal, n, defensive_share, generator)
    with torch.no_grad():
        pi = torch.cat([forbidden_mass(policy(x[i : i + batch_size]), token_ids)
                        for i in range(0, n, batch_size)])
    terms = torch.exp(log_w) * pi
    mean = float(terms.mean())
    rel_se = float(terms.std()) / (mean * math.sqrt(n)) if mean > 0 else math.inf
    log_p = math.log(mean) if mean > 0 else -math.inf
    ci = normal_log_ci(log_p, rel_se, confidence) if mean > 0 else (-math.inf, -math.inf)
    diagnostics = {"draws": n, "ess": ess(log_w), "mean_forbidden_mass_of_draws": float(pi.mean()),
                   "max_forbidden_mass": float(pi.max())}
    return Estimate(
        log10_p=to_log10(log_p), ci_log10=(to_log10(ci[0]), to_log10(ci[1])), n_model_calls=n,
        method="mc" if proposal is None else "lm-proposal-is", seconds=time.perf_counter() - start,
        confidence=confidence, seed=seed_value, settings={"defensive_share": defensive_share},
        diagnostics=diagnostics,
    )
