"""``method="auto"``: measure first, then let two methods that fail differently check each other.

1. A pilot of plain sampling spends PILOT_FRACTION of the budget. Its Clopper-Pearson
   interval is exact and is kept to the end (``_policy`` rule 4). If it already sees
   PILOT_HITS catastrophes, p is large enough to sample and plain sampling finishes.
2. For a Gaussian or noisy empirical D with a graded spec, the rest is shared between
   importance sampling (which first searches for the failure modes, ``modes``) and
   splitting, run independently; ``_policy.combine`` turns their results and the
   pilot's into one interval: combined when they agree, a span marked not trusted when
   they do not, the pilot's bound when neither finds anything. In high dimension
   (HIGH_DIMENSION and up) splitting gets the larger share: there a Gaussian-mixture
   proposal rarely fits a failure set spread over many directions (measured on the
   stress suite, benchmarks/stress.md), while splitting's cost grows only with log p.
3. Other inputs get the one method that supports them: ``tsis`` for independent
   tokens, splitting for any other D with a reversible move, plain sampling for
   black-box predicates (the only method that needs nothing but a yes/no answer).

The policy is written down in docs/design/006-interval-policy.md.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..dists.base import Distribution
from ..dists.lm import LMDistribution
from ..dists.unnormalized import ChainStarted
from ..oracle import ScoreOracle
from ..specs import Spec
from . import _policy, _space
from .base import Outcome, build
from .importance import ImportanceSampling
from .lm_auto import run_lm_auto
from .lm_is import LMImportanceSampling
from .mc import MonteCarlo, counts_outcome
from .modes import START_RADII
from .splitting import Splitting

PILOT_FRACTION = 0.1
PILOT_HITS = 30
#: input dimension from which splitting gets the larger share of the budget
HIGH_DIMENSION = 100
#: importance sampling's share of the budget after the pilot (low, high dimension)
IS_SHARE = (0.55, 0.3)
#: splitting budget below which it runs 5 repeats instead of 10 (its CI needs a spread)
FEW_REPEATS_BELOW = 40_000


def choose_method(model: nn.Module, dist: Distribution, spec: Spec, budget: int) -> str:
    """The method ``auto`` reports for these inputs: "cross-check", a single method, or "mc"."""
    if isinstance(dist, LMDistribution):
        refused = LMImportanceSampling().unsupported_reason(model, dist, spec)
        return "lm-is" if refused is None else "mc"
    if dist.is_discrete:
        return token_method(model, dist, spec, budget)[0]
    if _cross_checkable(model, dist, spec):
        return "cross-check"
    splitting = Splitting()
    if splitting.unsupported_reason(model, dist, spec) is None and budget >= splitting.min_budget():
        return "splitting"
    return "mc"


def run_auto(
    oracle: ScoreOracle, budget: int, generator: torch.Generator, confidence: float
) -> tuple[str, Outcome]:
    """Pilot plain sampling, then plain sampling, the cross-check or the one supported method."""
    model, dist, spec = oracle.model, oracle.dist, oracle.spec
    if isinstance(dist, LMDistribution):
        return run_lm_auto(oracle, budget, generator, confidence)  # budget: policy plus LM calls
    if isinstance(dist, ChainStarted):
        # no sampler, so no plain-sampling pilot to check against: the one method that fits
        chosen = "is" if ImportanceSampling().unsupported_reason(model, dist, spec) is None else "splitting"
        return chosen, build(chosen, {}).run(oracle, budget, generator, confidence)
    pilot_draws = int(PILOT_FRACTION * budget)
    rare = choose_method(model, dist, spec, budget - pilot_draws)
    if rare == "mc":
        outcome = MonteCarlo().run(oracle, budget, generator, confidence)
        refusal = token_method(model, dist, spec, budget - pilot_draws)[1] if dist.is_discrete else None
        return "mc", outcome if refusal is None else replace(outcome, warnings=(*outcome.warnings, refusal))
    pilot = MonteCarlo().run(oracle, pilot_draws, generator, confidence)
    hits = pilot.diagnostics["hits"]
    if hits >= PILOT_HITS:
        total, _ = _top_up(oracle, pilot, budget - pilot_draws, generator, confidence)
        return "mc", replace(total, diagnostics={**total.diagnostics, "pilot_hits": hits})
    left = budget - pilot_draws
    if rare == "cross-check":
        return _cross_check(oracle, left, generator, confidence, pilot, pilot_draws)
    single = build(rare, {}).run(oracle, left, generator, confidence)
    outcome = _policy.combine([_policy.Candidate(rare, single)], pilot, pilot_draws, confidence)
    return rare, outcome


def _cross_checkable(model: nn.Module, dist: Distribution, spec: Spec) -> bool:
    """Whether both importance sampling and splitting can run on these inputs."""
    return (_space.supports(dist) and ImportanceSampling().unsupported_reason(model, dist, spec) is None
            and Splitting().unsupported_reason(model, dist, spec) is None)


def _cross_check(oracle: ScoreOracle, budget: int, generator: torch.Generator, confidence: float,
                 pilot: Outcome, pilot_draws: int) -> tuple[str, Outcome]:
    """Importance sampling and splitting on shares of ``budget``, combined by the interval policy.

    Returns the method reported ("is+splitting", or "mc" when nothing was found to estimate).
    """
    high_dim = oracle.dist.dim >= HIGH_DIMENSION
    is_budget = int((IS_SHARE[1] if high_dim else IS_SHARE[0]) * budget)
    split_budget = budget - is_budget
    splitting = Splitting(n_repeats=5 if split_budget < FEW_REPEATS_BELOW else 10)
    importance = ImportanceSampling()
    start = oracle.n_calls
    found = importance.search_modes(oracle, is_budget, generator)
    if pilot.diagnostics["hits"] == 0 and found is not None and found.catastrophic_chains == 0:
        return "mc", _nothing_found(oracle, budget - (oracle.n_calls - start), generator, confidence, pilot)
    is_left = is_budget - (oracle.n_calls - start)
    is_outcome = importance.run_from(oracle, is_left, generator, confidence, found)
    candidates = [_policy.Candidate("is", is_outcome)]
    if split_budget >= splitting.min_budget():
        split_start = oracle.n_calls
        candidates.append(_policy.Candidate("splitting", splitting.run(oracle, split_budget, generator,
                                                                       confidence)))
        split_budget -= oracle.n_calls - split_start
    pilot, pilot_draws = _top_up(oracle, pilot, split_budget, generator, confidence)
    return "is+splitting", _policy.combine(candidates, pilot, pilot_draws, confidence)


def _top_up(oracle: ScoreOracle, pilot: Outcome, calls: int, generator: torch.Generator,
            confidence: float) -> tuple[Outcome, int]:
    """The pilot with ``calls`` more plain draws pooled in (splitting rarely spends its whole share).

    Returns the pooled outcome and its number of draws: more exact draws tighten the
    plain-sampling interval that the policy checks the rare-event methods against.
    """
    hits, draws = pilot.diagnostics["hits"], pilot.diagnostics["draws"]
    if calls > 0:
        more = MonteCarlo().run(oracle, calls, generator, confidence)
        hits, draws = hits + more.diagnostics["hits"], draws + more.diagnostics["draws"]
    return counts_outcome(hits, draws, confidence), draws


def _nothing_found(oracle: ScoreOracle, budget: int, generator: torch.Generator, confidence: float,
                   pilot: Outcome) -> Outcome:
    """No catastrophe in the pilot nor anywhere the mode search looked: plain sampling for the rest.

    Rare-event methods would then most likely return heuristic bounds; more plain draws,
    pooled with the pilot's, give a proven one nearly as tight as plain sampling with the
    whole budget (the search costs a few per cent of it).
    """
    total, draws = _top_up(oracle, pilot, budget, generator, confidence)
    note = (f"the failure-mode search (up to {max(START_RADII)} standard deviations out) found no "
            "catastrophic input, so the rest of the budget went to plain sampling")
    return replace(total, warnings=(*total.warnings, note),
                   assumes=f"nothing: an exact binomial interval from {draws:,} draws of D")


def token_method(model: nn.Module, dist: Distribution, spec: Spec, budget: int) -> tuple[str, str | None]:
    """For token inputs (a discrete D): ("tsis", None), or ("mc", a warning naming why tsis was refused).

    tsis needs no gradient, so no token model makes it refuse; only the inputs can (not
    independent tokens, no graded score, too small a budget). The fallback is
    plain sampling, never splitting: with no hit, splitting's -inf comes with no proven
    upper bound, while plain sampling's Clopper-Pearson bound holds whatever the model.
    """
    tsis = build("tsis", {})
    reason = tsis.unsupported_reason(model, dist, spec)
    if reason is None and budget < tsis.min_budget():
        reason = f"a budget of {budget:,} calls is below its minimum of {tsis.min_budget():,}"
    if reason is None:
        return "tsis", None
    return "mc", (f"tsis was refused ({reason}); plain sampling was used instead, whose upper bound "
                  "holds even with no hit")
