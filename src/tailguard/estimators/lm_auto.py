"""``auto`` for an LM-written D: a plain pilot, then steered importance sampling, one interval.

The budget counts policy calls and LM calls alike (a plain draw costs one of each).

0. A spec without a graded score (a black-box ``Predicate``) gets plain sampling.
1. A plain-sampling pilot (PILOT_SHARE of the budget). With PILOT_HITS catastrophes
   or more, p is large enough to sample and plain sampling gets the rest.
2. ``lm-is`` adapts its steered proposal (ADAPT_SHARE). If neither the pilot nor the
   adaptation met a single catastrophe, the rest goes to plain draws, pooled with the
   pilot and the adaptation's own draws of D: the zero-hit upper bound is then the
   exact Clopper-Pearson bound of 64 % of the draws plain sampling would make with the
   whole budget (0.19 decades looser: the price of the search, which a shorter one
   would not pay but then misses the rarer targets), never the importance bound
   inflated by 1 / defensive (1 decade).
3. Otherwise ``lm-is`` estimates with the rest but REST_SHARE, which goes to plain
   draws pooled with the pilot, and ``_policy.combine`` checks the estimate against
   that exact interval (docs/design/006-interval-policy.md, rule 4).

Splitting with the LM's suffix moves (``method="splitting"``) is not part of it: on
the enumerable LM benchmark its levels stalled below the catastrophes (estimates
0.1-2 decades low inside narrow intervals), and an inverse-variance combination with
``lm-is``'s wide, proven interval followed splitting's point (docs/design/013-lm-estimation.md).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..oracle import ScoreOracle
from . import _policy
from .base import Outcome
from .lm_is import LMImportanceSampling, spent_calls
from .mc import MonteCarlo, counts_outcome

PILOT_SHARE = 0.1
PILOT_HITS = 30
ADAPT_SHARE = 0.4
#: plain draws at the end, pooled with the pilot for the exact interval the estimate is checked against
REST_SHARE = 0.05


def run_lm_auto(oracle: ScoreOracle, budget: int, generator: torch.Generator,
                confidence: float) -> tuple[str, Outcome]:
    """The method reported and its outcome, spending at most ``budget`` policy plus LM calls."""
    start = spent_calls(oracle)

    def left() -> int:
        return budget - (spent_calls(oracle) - start)

    importance = LMImportanceSampling()
    refused = importance.unsupported_reason(oracle.model, oracle.dist, oracle.spec)
    if refused is not None:
        plain = MonteCarlo().run(oracle, max(budget // 2, 1), generator, confidence)
        return "mc", replace(plain, warnings=(*plain.warnings, f"lm-is was refused ({refused}); plain "
                                              "sampling was used instead"))
    pilot = MonteCarlo().run(oracle, max(int(PILOT_SHARE * budget) // 2, 1), generator, confidence)
    hits, draws = pilot.diagnostics["hits"], pilot.diagnostics["draws"]
    if hits >= PILOT_HITS or left() < 2 * importance.min_budget():
        total, _ = _plain_top_up(oracle, hits, draws, left() // 2, generator, confidence)
        return "mc", replace(total, diagnostics={**total.diagnostics, "pilot_hits": hits})
    adapted = importance.adapt(oracle, int(ADAPT_SHARE * budget), generator)
    if hits == 0 and not adapted.found_any:
        total, pooled = _plain_top_up(oracle, adapted.plain_hits, draws + adapted.plain_draws,
                                      left() // 2, generator, confidence)
        note = (f"neither plain draws nor {adapted.batches} batches of the steered proposal met a "
                "catastrophe, so the rest of the budget went to plain sampling")
        return "mc", replace(total, warnings=(*total.warnings, note),
                             assumes=f"nothing: an exact binomial interval from {pooled:,} draws of D")
    rest = int(REST_SHARE * budget)
    outcome = importance.finish(oracle, adapted, left() - rest, generator, confidence)
    pooled_pilot, pooled = _plain_top_up(oracle, hits, draws, left() // 2, generator, confidence)
    return "lm-is", _policy.combine([_policy.Candidate("lm-is", outcome)], pooled_pilot, pooled, confidence)


def _plain_top_up(oracle: ScoreOracle, hits: int, draws: int, more: int, generator: torch.Generator,
                  confidence: float) -> tuple[Outcome, int]:
    """The plain counts (hits of draws) with ``more`` plain draws pooled in, and the pooled draws."""
    if more > 0:
        extra = MonteCarlo().run(oracle, more, generator, confidence)
        hits, draws = hits + extra.diagnostics["hits"], draws + extra.diagnostics["draws"]
    return counts_outcome(hits, draws, confidence), draws
