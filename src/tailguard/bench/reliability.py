"""OpenTURNS' reliability benchmark (otbenchmark 0.2.1) as tailguard cases, plus its baselines.

otbenchmark's 26 problems are structural-reliability classics (Rackwitz-Fiessler,
Waarts, Borri-Speranzini, ...): inputs X with independent marginals (normal,
uniform, log-normal, Gumbel, exponential; none has a copula or correlation, so no
Nataf transform is needed), a limit state g and failure {g(X) < t}. Each becomes a
tailguard Case in STANDARD NORMAL SPACE, as reliability methods see it:
D = N(0, I_d) in float64, and the model maps z to the score t - g(T^-1(z)), where
T^-1 applies each marginal's inverse CDF to Phi(z_i) (written in torch, so it
differentiates wherever g does). The spec is ``OutputAbove(0, 0.0)``: score > 0 is
exactly OpenTURNS' event ``g < t``.

Truths are not otbenchmark's references, several of which are rounded or wrong:
each was re-checked by ``benchmarks/reliability_truth.py`` (a closed form, 1-D or
2-D quadrature, or 1e8 to 2e8 draws of plain sampling in torch, each cross-checked
by a second method) and stored in ``TRUTHS``.

The OpenTURNS baselines run the ORIGINAL problem (physical space, its own
distribution and symbolic function), as a user of OpenTURNS would: SubsetSampling
and StandardSpaceCrossEntropyImportanceSampling through the shared budget logic of
``openturns_runner.run_event``, and FORM (Cobyla, derivative-free, so that every
function evaluation is a counted call), a heuristic without an error bar.

otbenchmark still calls ``ot.ComposedDistribution`` (renamed JointDistribution in
OpenTURNS 1.24), and two of its formulas (RP77, RP110) use an if/else syntax that
OpenTURNS 1.27 no longer parses; those two events are rebuilt here with the same
distributions and the formula rewritten as ``if(c, a, b)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._logspace import to_log10
from ..dists import Gaussian
from ..errors import (
    BudgetError,
    InvalidArgumentError,
    MissingExtraError,
    require_extra,
)
from ..result import Estimate
from ..specs import OutputAbove
from .cases import Case
from .openturns_runner import OT_METHODS, OpenTurnsFailure, run_event
from .reliability_problems import PROBLEMS, PROBLEMS_BY_NAME, Problem
from .runner import Record, record_of

FORM_METHOD = "openturns-form"
RELIABILITY_METHODS = (*OT_METHODS, FORM_METHOD)
OTBENCHMARK_VERSION = "0.2.1"
#: limit-state calls FORM makes outside its design-point search (measured on OpenTURNS 1.27)
FORM_OWN_CALLS = 2




@dataclass(frozen=True)
class Truth:
    """A checked reference: log10 p, the interval of the check itself, how it was obtained."""

    log10_p: float
    ci_log10: tuple[float, float]
    source: str
    otbenchmark_p: float  # otbenchmark's own reference, for comparison only


# Printed by benchmarks/reliability_truth.py. A comment above a row marks an otbenchmark
# reference outside the checked interval: DISAGREES when it is off by 1 % or more.
TRUTHS: dict[str, Truth] = {
    "RP8": Truth(-3.101488728, (-3.103629809, -3.099350257),
        "plain sampling: 158,322 of 2e+08 draws, Clopper-Pearson 95 %", 0.0007897927545598118),
    "RP14": Truth(-3.110583435, (-3.112747098, -3.108422436),
        "plain sampling: 155,041 of 2e+08 draws, Clopper-Pearson 95 %", 0.00077285),
    "RP22": Truth(-2.375995811, (-2.375996502, -2.375995120),
        "quadrature (2-D): conditional roots in z2, Simpson in z1, 4001 x 4001", 0.004207305511299618),
    "RP24": Truth(-2.543729579, (-2.543992775, -2.543466542),
        "quadrature (2-D): conditional roots in z2, Simpson in z1, 4001 x 4001", 0.00286),
    "RP25": Truth(-4.381975414, (-4.382416484, -4.381534792),
        "quadrature (2-D): conditional roots in z2, Simpson in z1, 4001 x 4001", 4.148566293759747e-05),
    # outside the interval: otbenchmark's 1.45329e-07 is off by -6.9e-08
    "RP28": Truth(-6.837646324, (-6.837646324, -6.837646324),
        "quadrature (2-D): conditional roots in z2, Simpson in z1, 4001 x 4001", 1.4532945550025393e-07),
    "RP31": Truth(-2.491243940, (-2.491243940, -2.491243940),
        "quadrature (2-D): conditional roots in z2, Simpson in z1, 4001 x 4001", 0.003226681209587691),
    # outside the interval: otbenchmark's 0.00257 is off by -2.2e-03
    "RP33": Truth(-2.589121956, (-2.589121956, -2.589121956),
        "quadrature (1-D): 2 Phi(-3) - int_3^inf phi(t) Phi((t - 3 sqrt 3) / sqrt 2) dt", 0.00257),
    "RP35": Truth(-2.458552039, (-2.458552945, -2.458551133),
        "quadrature (2-D): conditional roots in z2, Simpson in z1, 4001 x 4001", 0.00347894632),
    # outside the interval: otbenchmark's 0.0081 is off by +6.6e-03
    "RP38": Truth(-2.094372475, (-2.095318076, -2.093427395),
        "plain sampling: 804,688 of 1e+08 draws, Clopper-Pearson 95 %", 0.0081),
    # outside the interval: otbenchmark's 0.0313 is off by -6.5e-04
    "RP53": Truth(-1.504171512, (-1.504171512, -1.504171512),
        "quadrature (2-D): conditional roots in z2, Simpson in z1, 4001 x 4001", 0.0313),
    # outside the interval: otbenchmark's 0.000998 is off by +7.5e-03
    "RP54": Truth(-3.004100329, (-3.004100329, -3.004100329),
        "exact: P[Gamma(20, 1) < 8.951], the sum of 20 Exp(1)", 0.000998),
    # outside the interval: otbenchmark's 0.560014 is off by +8.4e-07
    "RP55": Truth(-0.251801147, (-0.251801399, -0.251800895),
        "quadrature (2-D): conditional roots in z2, Simpson in z1, 4001 x 4001", 0.5600144282863704),
    # outside the interval: otbenchmark's 0.0284 is off by +5.6e-03
    "RP57": Truth(-1.549098213, (-1.549941415, -1.548256644),
        "quadrature (2-D): conditional roots in z2, Simpson in z1, 4001 x 4001", 0.0284),
    # DISAGREES: otbenchmark's 0.0456 is off by +1.6e-02
    "RP60": Truth(-1.348126209, (-1.348519069, -1.347733450),
        "plain sampling: 4,486,150 of 1e+08 draws, Clopper-Pearson 95 %", 0.0456),
    # outside the interval: otbenchmark's 0.000379 is off by +5.5e-03
    "RP63": Truth(-3.423723612, (-3.423723612, -3.423723612),
        "quadrature (1-D): E[Phi(4.5 - 0.1 Q)], Q ~ chi2(99)", 0.000379),
    "RP75": Truth(-2.007919528, (-2.007919528, -2.007919528),
        "quadrature (2-D): conditional roots in z2, Simpson in z1, 4001 x 4001", 0.00981929872154689),
    # DISAGREES: otbenchmark's 2.87e-07 is off by +6.7e-02
    "RP77": Truth(-6.570111487, (-6.570111487, -6.570111487),
        "quadrature (1-D): int over x3 of the conditional failure probability", 2.87e-07),
    # outside the interval: otbenchmark's 0.00543 is off by -7.5e-03
    "RP89": Truth(-2.261911017, (-2.261911017, -2.261911017),
        "quadrature (2-D): conditional roots in z2, Simpson in z1, 4001 x 4001", 0.00543),
    "RP91": Truth(-3.154948494, (-3.157225778, -3.152674161),
        "plain sampling: 139,985 of 2e+08 draws, Clopper-Pearson 95 %", 0.000697),
    # DISAGREES: otbenchmark's 2.92e-07 is off by +1.9e-02
    "RP107": Truth(-6.542645672, (-6.542645672, -6.542645672),
        "exact: Phi(-5), the sum of 10 N(0, 1) over sqrt(10)", 2.92e-07),
    # outside the interval: otbenchmark's 3.19e-05 is off by -1.8e-03
    "RP110": Truth(-4.495421980, (-4.495421980, -4.495421980),
        "exact: 1 - (1 - Phi(-4)) (1 - Phi(-5)): x1 > 4 or x2 > 5", 3.19e-05),
    # DISAGREES: otbenchmark's 7.65e-07 is off by -4.8e-02
    "RP111": Truth(-6.095009472, (-6.095009472, -6.095009472),
        "quadrature (2-D): conditional roots in z2, Simpson in z1, 4001 x 4001", 7.65e-07),
    "four-branch": Truth(-2.653100574, (-2.653101008, -2.653100141),
        "quadrature (2-D): conditional roots in z2, Simpson in z1, 4001 x 4001", 0.0022227950661944398),
    "R-S": Truth(-1.104303462, (-1.104303462, -1.104303462),
        "exact: Phi(-sqrt(2)), R - S ~ N(2, 2)", 0.07864960352514257),
    "axial-beam": Truth(-1.534644001, (-1.534644001, -1.534644001),
        "quadrature (2-D): conditional roots in z2, Simpson in z1, 4001 x 4001", 0.02919819462483095),
}


# --- tailguard cases ----------------------------------------------------------------------------
class LimitStateModel(nn.Module):
    """z (n, d) in standard normal space -> (n, 1) score t - g(T^-1(z)); failure iff score > 0."""

    def __init__(self, problem: Problem):
        super().__init__()
        self.marginals = problem.marginals
        self.limit_state = problem.limit_state
        # a float64 parameter (never trained): tailguard's oracle feeds inputs in the model's dtype
        self.threshold = nn.Parameter(torch.tensor(problem.threshold, dtype=torch.float64),
                                      requires_grad=False)

    def physical(self, z: Tensor) -> Tensor:
        """T^-1(z): (n, d) standard normal -> (n, d) physical inputs, marginal by marginal."""
        return torch.stack([m.from_normal(z[:, i]) for i, m in enumerate(self.marginals)], dim=1)

    def forward(self, z: Tensor) -> Tensor:
        return (self.threshold - self.limit_state(self.physical(z)))[:, None]


def _problem(name: str) -> Problem:
    if name not in PROBLEMS_BY_NAME:
        raise InvalidArgumentError(
            f"problem_name must be one of {', '.join(PROBLEMS_BY_NAME)}, got {name!r}")
    return PROBLEMS_BY_NAME[name]


def reliability_case(name: str) -> Case:
    """The tailguard Case of problem ``name`` in standard normal space, with its checked truth."""
    problem = _problem(name)
    truth = TRUTHS[name]
    dist = Gaussian(torch.zeros(problem.dim, dtype=torch.float64))
    return Case(f"reliability/{name}", "reliability", LimitStateModel(problem), dist,
                OutputAbove(0, 0.0), truth.log10_p, truth.ci_log10, truth.source)


def reliability_cases() -> list[Case]:
    """Every ported otbenchmark problem as a Case, in otbenchmark's order."""
    return [reliability_case(p.name) for p in PROBLEMS]


# --- the original problems in OpenTURNS ---------------------------------------------------------
def load_otbenchmark() -> Any:
    """otbenchmark, made importable on OpenTURNS >= 1.24 (it still builds ot.ComposedDistribution)."""
    ot: Any = require_extra("openturns", "bench")
    if not hasattr(ot, "ComposedDistribution"):
        ot.ComposedDistribution = ot.JointDistribution
    try:
        import otbenchmark
    except ImportError as exc:
        raise MissingExtraError(
            "'otbenchmark' is not installed; install it with: "
            f"pip install --no-deps otbenchmark=={OTBENCHMARK_VERSION} (it pins numpy < 2)"
        ) from exc
    return otbenchmark


def openturns_event(name: str) -> Any:
    """The original problem's ot.ThresholdEvent in physical space (a fresh one per call)."""
    problem = _problem(name)
    if problem.openturns_formula is None:
        return getattr(load_otbenchmark(), problem.otbenchmark_class)().getEvent()
    ot: Any = require_extra("openturns", "bench")
    inputs = [f"x{i + 1}" for i in range(problem.dim)]
    function = ot.SymbolicFunction(inputs, [problem.openturns_formula])
    distribution = ot.JointDistribution([m.openturns(ot) for m in problem.marginals])
    vector = ot.CompositeRandomVector(function, ot.RandomVector(distribution))
    return ot.ThresholdEvent(vector, ot.Less(), problem.threshold)


def _call_counter(event: Any) -> Callable[[], int]:
    """Calls of the event's function so far, values and gradients (copies share the counter)."""
    function = event.getFunction()
    return lambda: int(function.getEvaluationCallsNumber()) + int(function.getGradientCallsNumber())


def _run_form(event: Any, budget: int, seed: int) -> Estimate:
    """FORM from the mean, Cobyla capped at ``budget`` calls: Phi(-beta), a heuristic.

    Cobyla's status is not checked, so a search cut short by the budget still gives
    its last point; the estimate is then marked untrusted.
    """
    ot: Any = require_extra("openturns", "bench")
    dim = int(event.getAntecedent().getDimension())
    if budget < dim + 1 + FORM_OWN_CALLS:
        raise BudgetError(f"budget {budget:,} is too small for {FORM_METHOD}; "
                          f"it needs {dim + 1 + FORM_OWN_CALLS:,}")
    started = time.perf_counter()
    calls = _call_counter(event)
    first = calls()
    solver = ot.Cobyla()
    solver.setMaximumCallsNumber(budget - FORM_OWN_CALLS)
    solver.setCheckStatus(False)
    solver.setStartingPoint(event.getAntecedent().getDistribution().getMean())
    algo = ot.FORM(solver, event)
    try:
        algo.run()
    except (RuntimeError, TypeError, ValueError) as exc:
        raise OpenTurnsFailure(f"{FORM_METHOD}: {str(exc).strip()}") from exc
    result = algo.getResult()
    spent = calls() - first
    warnings = ["FORM is a heuristic: Phi(-beta) at the design point carries no error bar"]
    if spent >= budget:  # Cobyla used all it was given
        warnings.append(f"the design-point search stopped at the budget ({budget:,} calls)")
    p = float(result.getEventProbability())
    return Estimate(
        log10_p=to_log10(math.log(p)) if p > 0 else -math.inf, ci_log10=(-math.inf, 0.0),
        n_model_calls=spent, method=FORM_METHOD, seconds=time.perf_counter() - started, seed=seed,
        settings={"solver": "Cobyla", "maximum_calls": budget},
        diagnostics={"hasofer_index": float(result.getHasoferReliabilityIndex())},
        warnings=tuple(warnings), heuristic=True, trusted=spent < budget,
        assumes="a limit state close to linear in standard space near a single design point",
    )


def run_openturns_reliability(problem_name: str, method: str, budget: int, seed: int) -> Record:
    """One OpenTURNS baseline on the ORIGINAL problem, as a benchmark record (runner's keys).

    ``method``: "openturns-subset", "openturns-ce" or "openturns-form". The record's
    truth is the checked one in ``TRUTHS``; a budget too small gives status
    "skipped", an OpenTURNS failure status "error".
    """
    if method not in RELIABILITY_METHODS:
        raise InvalidArgumentError(
            f"method must be one of {', '.join(RELIABILITY_METHODS)}, got {method!r}")
    event = openturns_event(problem_name)

    def run() -> Estimate:
        if method == FORM_METHOD:
            return _run_form(event, budget, seed)
        return run_event(method, event, _call_counter(event), budget, seed)

    return record_of(method, reliability_case(problem_name), budget, seed, run)
