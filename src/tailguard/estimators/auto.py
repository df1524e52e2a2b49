"""``method="auto"``: pick the estimator that suits the model, D and spec.

First a pilot of plain sampling spends a fifth of the budget: if it already sees
PILOT_HITS catastrophes, p is large enough to sample and plain sampling (exact
CI, no modelling assumption) finishes the job with the rest. Otherwise the order
of preference (measured in benchmarks/estimation.md) is importance sampling when
D has a density and the spec is graded (``is`` for Gaussian-like D, ``tsis`` for
independent tokens), then splitting when D has a reversible move, then plain
sampling. Black-box predicates get plain sampling, the only
method that needs nothing but a yes/no answer.

On a noisy empirical D with a budget too small for D itself to be drawn often per
data point, importance sampling runs as two independent halves (see ``_replicates``):
its proposal can then miss failures spread over many data points without its own CI
showing it, and two runs that disagree are how that becomes visible
(benchmarks/estimation.md, the digits case at 3e4 calls). Otherwise a single run's CI
covers (94-98 % in the same benchmark) and halving the budget would cost accuracy, so
it runs once.
"""

from __future__ import annotations

import torch
from torch import nn

from ..dists.base import Distribution
from ..dists.empirical import NoisyEmpirical
from ..oracle import ScoreOracle
from ..specs import Spec
from . import _replicates
from .base import Outcome, available, build
from .importance import ImportanceSampling
from .mc import MonteCarlo, counts_outcome

PREFERENCE = ("is", "tsis", "itgis", "splitting", "mc")
PILOT_FRACTION = 0.2
PILOT_HITS = 30


def choose_method(model: nn.Module, dist: Distribution, spec: Spec, budget: int) -> str:
    """Name of the first estimator in PREFERENCE that supports these inputs and budget."""
    for name in PREFERENCE:
        if name not in available():
            continue
        est = build(name, {})
        if est.unsupported_reason(model, dist, spec) is None and budget >= est.min_budget():
            return name
    return "mc"


def run_auto(
    oracle: ScoreOracle, budget: int, generator: torch.Generator, confidence: float
) -> tuple[str, Outcome]:
    """Pilot plain sampling, then plain sampling or the preferred rare-event method."""
    model, dist, spec = oracle.model, oracle.dist, oracle.spec
    rare = choose_method(model, dist, spec, budget - int(PILOT_FRACTION * budget))
    if rare == "mc":
        return "mc", MonteCarlo().run(oracle, budget, generator, confidence)
    pilot = MonteCarlo().run(oracle, int(PILOT_FRACTION * budget), generator, confidence)
    hits, draws = pilot.diagnostics["hits"], pilot.diagnostics["draws"]
    if hits >= PILOT_HITS:
        rest = MonteCarlo().run(oracle, budget - draws, generator, confidence)
        total = counts_outcome(hits + rest.diagnostics["hits"], budget, confidence)
        return "mc", Outcome(total.log_p, total.ci, {**total.diagnostics, "pilot_hits": hits})
    estimator = build(rare, {})
    half = (budget - draws) // 2
    if _needs_replicates(estimator, dist, budget - draws):
        first = estimator.run(oracle, half, generator, confidence)
        second = estimator.run(oracle, budget - draws - half, generator, confidence)
        outcome = _replicates.combine(first, second, pilot.ci[1], confidence)
    else:
        outcome = estimator.run(oracle, budget - draws, generator, confidence)
    return rare, Outcome(
        outcome.log_p, outcome.ci, {**outcome.diagnostics, "pilot_hits": hits, "pilot_draws": draws},
        outcome.warnings, outcome.heuristic,
    )


def _needs_replicates(estimator: object, dist: Distribution, budget: int) -> bool:
    """Two half runs for `is` on a noisy empirical D whose single run could not vouch for itself."""
    return (isinstance(estimator, ImportanceSampling) and isinstance(dist, NoisyEmpirical)
            and estimator.thin_defence_at(budget, dist) and budget // 2 >= estimator.min_budget())
