"""OpenTURNS' rare-event algorithms on tailguard's problems, at the same model-call budget.

The classic reliability library a user would reach for instead: ``SubsetSampling``
(Au & Beck 2001) and ``StandardSpaceCrossEntropyImportanceSampling`` (Rubinstein;
a single Gaussian proposal in standard space, Morio & Balesdent 2015). The model
and spec become one ``ot.PythonFunction`` with a vectorised ``func_sample`` that
goes through the same ScoreOracle as every tailguard estimator, so calls are
counted identically. The limit state is the spec's score, the event score > 0;
D becomes ``ot.Normal`` with the same mean and covariance.

Budget: both algorithms spend N model calls per step, and the number of steps is
unknown in advance. A pilot run with N = max(250, budget / 50) counts the steps;
the main run then takes N = (budget - pilot calls) / (steps + 2). A stop callback
interrupts any run whose next block would exceed the budget; then (or if the main
run fails) the pilot's estimate is reported, with a warning. OpenTURNS has one
global random generator; it is seeded from the run's seed before each run.
``run_event`` is that budget logic on any OpenTURNS event with any call counter,
so that OpenTURNS' own problems (``reliability.py``) are run the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .._logspace import normal_log_ci, to_log10
from ..dists import Gaussian
from ..dists.base import Distribution
from ..errors import BudgetError, TailguardError, UnsupportedError, require_extra
from ..oracle import ScoreOracle
from ..result import Estimate
from ..specs import Spec

OT_METHODS = ("openturns-subset", "openturns-ce")
LEVEL_PROBABILITY = 0.1  # conditional probability per subset step / CE quantile level
MIN_BUDGET = 2_000


class OpenTurnsFailure(TailguardError, RuntimeError):
    """OpenTURNS itself failed (e.g. a degenerate cross-entropy fit at a small N)."""


def unsupported_reason(dist: Distribution) -> str | None:
    """None if OpenTURNS can be run on D, else why not."""
    if not isinstance(dist, Gaussian):
        return (f"OpenTURNS needs D as an explicit ot.Distribution; {type(dist).__name__} "
                "is not translated (only Gaussian is)")
    return None


def _ot_normal(ot: Any, dist: Gaussian) -> Any:
    """ot.Normal with D's mean and covariance over the flattened input."""
    mean = dist.mean.detach().double().reshape(-1).numpy()
    cov = dist.covariance().detach().numpy()
    return ot.Normal(ot.Point(mean.tolist()), ot.CovarianceMatrix(cov.tolist()))


def _event(ot: Any, oracle: ScoreOracle, dist: Gaussian) -> Any:
    """ThresholdEvent {score(x) > 0}, x ~ D, with the score computed by ``oracle``."""
    shape = dist.event_shape

    def score_sample(xs: Any) -> np.ndarray:
        x = torch.from_numpy(np.asarray(xs, dtype=np.float64)).reshape(-1, *shape)
        return oracle.scores(x).numpy()[:, None]

    fn = ot.PythonFunction(dist.dim, 1, func_sample=score_sample)
    vector = ot.CompositeRandomVector(fn, ot.RandomVector(_ot_normal(ot, dist)))
    return ot.ThresholdEvent(vector, ot.Greater(), 0.0)


def _algorithm(ot: Any, method: str, event: Any, n: int) -> Any:
    """The OpenTURNS algorithm with N = n evaluations per step (one block of n)."""
    if method == "openturns-subset":
        algo = ot.SubsetSampling(event)
        algo.setConditionalProbability(LEVEL_PROBABILITY)
        algo.setMinimumProbability(1e-300)  # the default stops near 1e-154; never stop early
    else:
        algo = ot.StandardSpaceCrossEntropyImportanceSampling(event, LEVEL_PROBABILITY)
    algo.setMaximumOuterSampling(1)
    algo.setBlockSize(n)
    return algo


def _run_once(ot: Any, method: str, event: Any, n: int, calls: Callable[[], int],
              budget: int, seed: int) -> dict[str, Any] | str:
    """One run with n per step, or a sentence saying why it gave no result."""
    ot.RandomGenerator.SetSeed(seed)
    start_calls = calls()
    algo = _algorithm(ot, method, event, n)
    stop: Callable[[], bool] = lambda: calls() + n > budget  # noqa: E731
    algo.setStopCallback(stop)  # the reference must outlive run()
    try:
        algo.run()
    except (RuntimeError, TypeError, ValueError) as exc:  # what OpenTURNS' errors map to
        if calls() + n > budget:
            return f"stopped before exceeding the budget after {calls():,} calls"
        return f"OpenTURNS failed with N = {n}: {str(exc).strip()}"
    result = algo.getResult()
    return {"p": float(result.getProbabilityEstimate()),
            "cov": float(result.getCoefficientOfVariation()),
            "steps": int(algo.getStepsNumber()), "n_per_step": n,
            "calls": calls() - start_calls}


def run_openturns(method: str, model: nn.Module, dist: Distribution, spec: Spec, budget: int,
                  seed: int, confidence: float = 0.95) -> Estimate:
    """Estimate P[C] with OpenTURNS ``method`` ("openturns-subset" or "openturns-ce")."""
    reason = unsupported_reason(dist)
    if reason is not None:
        raise UnsupportedError(reason)
    assert isinstance(dist, Gaussian)
    _check_request(method, budget)
    ot = require_extra("openturns", "bench")
    oracle = ScoreOracle(model, dist, spec)
    return run_event(method, _event(ot, oracle, dist), lambda: oracle.n_calls, budget, seed,
                     confidence)


def _check_request(method: str, budget: int) -> None:
    """Raise unless ``method`` is an OpenTURNS baseline and ``budget`` can pay for its pilot."""
    if method not in OT_METHODS:
        raise UnsupportedError(f"method {method!r} is not one of {', '.join(OT_METHODS)}")
    if budget < MIN_BUDGET:
        raise BudgetError(f"budget {budget:,} is too small for {method}; it needs {MIN_BUDGET:,}")


def run_event(method: str, event: Any, calls: Callable[[], int], budget: int, seed: int,
              confidence: float = 0.95) -> Estimate:
    """``method`` on any ot.ThresholdEvent, spending at most ``budget`` calls as counted by ``calls()``.

    The budget logic shared by tailguard's cases (``run_openturns``) and OpenTURNS' own
    reliability problems (``reliability.py``): pilot, main run, the pilot as fall-back.
    ``calls()`` returns the function evaluations spent so far, by whatever counts them.
    """
    _check_request(method, budget)
    ot = require_extra("openturns", "bench")
    started = time.perf_counter()
    first_call = calls()
    spent: Callable[[], int] = lambda: calls() - first_call  # noqa: E731
    pilot = _run_once(ot, method, event, max(250, budget // 50), spent, budget, seed)
    if isinstance(pilot, str):
        raise OpenTurnsFailure(f"{method} pilot run: {pilot}")
    warnings: list[str] = []
    n_main = (budget - spent()) // (pilot["steps"] + 2)
    main: dict[str, Any] | str = "too little budget left after the pilot"
    if n_main >= 100:
        main = _run_once(ot, method, event, n_main, spent, budget, seed + 1)
    if isinstance(main, str):
        warnings.append(f"main run: {main}; the pilot's estimate is given")
        main = pilot
    return _estimate(method, main, pilot, spent(), time.perf_counter() - started,
                     seed, confidence, warnings)


def _estimate(method: str, main: dict[str, Any], pilot: dict[str, Any], calls: int,
              seconds: float, seed: int, confidence: float, warnings: list[str]) -> Estimate:
    """The Estimate of a run: CI from OpenTURNS' own coefficient of variation (delta method)."""
    if main["p"] > 0:
        log_p = math.log(main["p"])
        low, high = normal_log_ci(log_p, main["cov"], confidence)
    else:
        log_p, low, high = -math.inf, -math.inf, 0.0
        warnings.append("OpenTURNS returned p = 0: no upper bound is available")
    return Estimate(
        log10_p=to_log10(log_p), ci_log10=(to_log10(low), to_log10(high)), n_model_calls=calls,
        method=method, seconds=seconds, confidence=confidence, seed=seed,
        settings={"level_probability": LEVEL_PROBABILITY, "n_per_step": main["n_per_step"]},
        diagnostics={"steps": main["steps"], "coefficient_of_variation": main["cov"],
                     "pilot_steps": pilot["steps"], "pilot_calls": pilot["calls"]},
        warnings=tuple(warnings),
    )
