"""``auto`` for an LM-written D: a plain pilot, then steered importance sampling, one interval.

The budget counts policy calls and LM calls alike (a plain draw costs one of each).

0. A spec without a graded score (a black-box ``Predicate``) gets plain sampling.
1. A plain-sampling pilot (PILOT_SHARE of the budget). With PILOT_HITS catastrophes
   or more, p is large enough to sample and plain sampling gets the rest.
2. ``lm-is`` adapts its steered proposal (ADAPT_SHARE). If neither the pilot nor the
   adaptation met a single catastrophe, the rest goes to plain draws, pooled with the
   pilot and every draw of D the adaptation made: the zero-hit upper bound is the exact
   Clopper-Pearson bound of all of them.
3. Otherwise ``lm-is`` estimates with the rest but REST_SHARE, which goes to plain
   draws, and ``_policy.combine`` checks the estimate against the exact interval of
   every plain draw (pilot, rest, and the proposal's own share of D;
   docs/design/006-interval-policy.md, rule 4).

Plain draws here score each distinct message once (``PlainDraws``): a message D writes
again costs its LM call but no policy call, so on a D that repeats messages the plain
draws, and the zero-hit bound, go further than ``mc``'s at the same budget. On a D that
never repeats, the search's steered draws are the price of the zero-hit bound (the
plain draws are then about 65 % of ``mc``'s; design note 013 says why no valid bound can
use the steered draws for more than their share of D).

A spec that states each message's exact chance of a catastrophe (``log_chance``, e.g.
``SampledTokenIn``) follows the same plan with chances averaged instead of hits counted
(``run_chance_auto``).

Splitting with the LM's suffix moves (``method="splitting"``) is not part of it: on
the enumerable LM benchmark its levels stalled below the catastrophes (estimates
0.1-2 decades low inside narrow intervals), and an inverse-variance combination with
``lm-is``'s wide, proven interval followed splitting's point (docs/design/013-lm-estimation.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ..oracle import ScoreOracle
from . import _policy
from .base import Outcome
from .lm_is import LMImportanceSampling, has_chance, log_chances, mean_chance_outcome, spent_calls
from .mc import MonteCarlo, counts_outcome

PILOT_SHARE = 0.1
PILOT_HITS = 30
ADAPT_SHARE = 0.4
#: plain draws at the end, pooled with the pilot for the exact interval the estimate is checked against
REST_SHARE = 0.05
#: most plain draws written and scored at once
PLAIN_CHUNK = 4096


@dataclass
class PlainDraws:
    """Plain draws of D and their log terms (log 1[C], or log pi for a spec that states chances).

    Each distinct message is scored once (its score is a function of the message, as the
    found set of ``lm-is`` assumes too), so a repeat costs one LM call and no policy call.
    """

    chance: bool
    known: dict[tuple[int, ...], float] = field(default_factory=dict)
    log_terms: list[float] = field(default_factory=list)

    def draw(self, oracle: ScoreOracle, calls: int, generator: torch.Generator) -> None:
        """Plain draws while at most ``calls`` policy plus LM calls are spent."""
        start = spent_calls(oracle)
        while (room := calls - (spent_calls(oracle) - start)) >= 2:
            x = oracle.dist.sample(min(room // 2, PLAIN_CHUNK), generator)
            rows = list(map(tuple, x.tolist()))
            fresh = list(dict.fromkeys(r for r in rows if r not in self.known))
            if fresh:
                self.known.update(zip(fresh, self._log_terms(oracle, torch.tensor(fresh)).tolist(),
                                      strict=True))
            self.log_terms += [self.known[r] for r in rows]

    def _log_terms(self, oracle: ScoreOracle, x: Tensor) -> Tensor:
        if self.chance:
            return log_chances(oracle, x)
        return torch.where(oracle.scores(x) > 0, 0.0, -math.inf).double()

    @property
    def draws(self) -> int:
        return len(self.log_terms)

    @property
    def hits(self) -> int:
        return sum(1 for t in self.log_terms if t == 0.0)

    def outcome(self, confidence: float, more_hits: int = 0, more_draws: int = 0) -> Outcome:
        """The exact binomial outcome (with ``more`` hits and draws made elsewhere), or the chances' mean."""
        if self.chance:
            return mean_chance_outcome(torch.tensor(self.log_terms, dtype=torch.float64), 0.0, confidence,
                                       {"draws": self.draws, "distinct_messages": len(self.known)})
        out = counts_outcome(self.hits + more_hits, self.draws + more_draws, confidence)
        return replace(out, diagnostics={**out.diagnostics, "distinct_messages": len(self.known)})

    def precise(self) -> bool:
        """Whether these draws alone pin p down as well as PILOT_HITS hits would."""
        if not self.chance:
            return self.hits >= PILOT_HITS
        rel_se = self.outcome(0.95).diagnostics["rel_se"]
        return rel_se <= 1.0 / math.sqrt(PILOT_HITS)


def run_lm_auto(oracle: ScoreOracle, budget: int, generator: torch.Generator,
                confidence: float) -> tuple[str, Outcome]:
    """The method reported and its outcome, spending at most ``budget`` policy plus LM calls."""
    start = spent_calls(oracle)

    def left() -> int:
        return budget - (spent_calls(oracle) - start)

    importance = LMImportanceSampling()
    refused = importance.unsupported_reason(oracle.model, oracle.dist, oracle.spec)
    if refused is not None:
        sampled = MonteCarlo().run(oracle, max(budget // 2, 1), generator, confidence)
        return "mc", replace(sampled, warnings=(*sampled.warnings, f"lm-is was refused ({refused}); plain "
                                              "sampling was used instead"))
    chance = has_chance(oracle.spec)
    plain = PlainDraws(chance)
    plain.draw(oracle, max(int(PILOT_SHARE * budget), 2), generator)
    pilot_hits = plain.hits
    if plain.precise() or left() < 2 * importance.min_budget():
        plain.draw(oracle, left(), generator)
        total = plain.outcome(confidence)
        return "mc", replace(total, diagnostics={**total.diagnostics, "pilot_hits": pilot_hits})
    adapted = importance.adapt(oracle, int(ADAPT_SHARE * budget), generator)
    if not chance and pilot_hits == 0 and not adapted.found_any:
        plain.draw(oracle, left(), generator)
        total = plain.outcome(confidence, adapted.plain_hits, adapted.plain_draws)
        note = (f"neither plain draws nor {adapted.batches} batches of the steered proposal met a "
                "catastrophe, so the rest of the budget went to plain sampling")
        pooled = total.diagnostics["draws"]
        return "mc", replace(total, warnings=(*total.warnings, note),
                             assumes=f"nothing: an exact binomial interval from {pooled:,} draws of D")
    rest = int(REST_SHARE * budget)
    outcome = importance.finish(oracle, adapted, left() - rest, generator, confidence)
    plain.draw(oracle, left(), generator)
    if chance:
        return "lm-is", _checked_by_plain(outcome, plain.outcome(confidence), confidence)
    more_hits, more_draws = outcome.diagnostics["plain_hits"], outcome.diagnostics["plain_draws"]
    pooled = plain.outcome(confidence, more_hits, more_draws)
    return "lm-is", _policy.combine([_policy.Candidate("lm-is", outcome)], pooled,
                                    pooled.diagnostics["draws"], confidence)


def _checked_by_plain(outcome: Outcome, plain: Outcome, confidence: float) -> Outcome:
    """``lm-is``'s chance estimate, its interval widened to cover the plain draws' where the two disagree."""
    diagnostics = {**outcome.diagnostics, "plain": {"log_p": plain.log_p, "ci": plain.ci,
                                                    "draws": plain.diagnostics["draws"]}}
    if _policy.agree(outcome, plain, confidence) or not math.isfinite(plain.log_p):
        return replace(outcome, diagnostics=diagnostics)
    low, high = min(outcome.ci[0], plain.ci[0]), max(outcome.ci[1], plain.ci[1])
    note = ("the steered estimate and the plain draws' mean of the chances disagree, so the interval "
            "spans both")
    return replace(outcome, ci=(low, high), diagnostics=diagnostics, warnings=(*outcome.warnings, note))
