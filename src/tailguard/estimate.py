"""``estimate`` and ``log_prob``: the public entry points for estimation."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ._logspace import to_log10
from .backends import Backend, resolve_backend
from .dists.base import Distribution
from .dists.conditioned import Conditioned
from .errors import BudgetError, InvalidArgumentError, UnsupportedError
from .estimators.auto import run_auto
from .estimators.base import DifferentiableEstimator, available, build, settings_of
from .estimators.conditioned import estimate_conditioned, log_prob_conditioned
from .estimators.lm_is import policy_budget, spent_calls
from .oracle import ScoreOracle, eval_mode
from .result import Estimate
from .specs import Spec


def make_generator(seed: int | torch.Generator) -> tuple[torch.Generator, int | None]:
    """A torch.Generator from a seed (recorded) or a generator passed through (seed unknown)."""
    if isinstance(seed, torch.Generator):
        return seed, None
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidArgumentError(f"seed must be an int or torch.Generator, got {seed!r}")
    return torch.Generator().manual_seed(seed), seed


def _check_common(model: nn.Module, dist: Distribution, spec: Spec) -> None:
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(dist, Distribution):
        raise InvalidArgumentError(
            f"dist must be a tailguard distribution (Gaussian, NoisyEmpirical, ...), "
            f"got {type(dist).__name__}"
        )
    if not isinstance(spec, Spec):
        raise InvalidArgumentError(
            f"spec must be a tailguard spec (ClassIs, OutputAbove, Predicate), "
            f"got {type(spec).__name__}"
        )


@contextmanager
def _progress_bar(enabled: bool, total: int, label: str) -> Iterator[Any]:
    """A rich progress bar over model calls, or a no-op callback."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        f"[bold]{label}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def estimate(
    model: nn.Module,
    dist: Distribution,
    spec: Spec,
    method: str = "auto",
    budget: int = 300_000,
    seed: int | torch.Generator = 0,
    confidence: float = 0.95,
    progress: bool = False,
    backend: str | Backend = "local",
    **settings: Any,
) -> Estimate:
    """Estimate P_{x~D}[C(x, M(x))] with a confidence interval and its cost in model calls.

    ``method`` is "auto" or a registered estimator name ("mc", "is", "splitting",
    "moments"); ``settings`` are that estimator's hyper-parameters. At most
    ``budget`` inputs are pushed through the model. ``backend`` says where the
    model's no-grad forward passes run: "local" (this process) or "ray" (sharded
    over Ray workers; a ``RayBackend(shards=...)`` fixes the number of shards).
    """
    _check_common(model, dist, spec)
    runner = resolve_backend(backend)
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise BudgetError(f"budget must be a positive int, got {budget!r}")
    if not 0.0 < confidence < 1.0:
        raise InvalidArgumentError(f"confidence must be in (0, 1), got {confidence!r}")
    generator, seed_value = make_generator(seed)
    if isinstance(dist, Conditioned):
        # P[C | R] is a ratio of two estimates on the base distribution, each made by this function
        return estimate_conditioned(estimate, model, dist, spec, method, budget, (generator, seed_value),
                                    confidence, progress, backend, settings)
    if method == "auto" and settings:
        raise InvalidArgumentError("settings need an explicit method; with method='auto' give none")
    if method != "auto":
        estimator = build(method, settings)
        reason = estimator.unsupported_reason(model, dist, spec)
        if reason is not None:
            raise UnsupportedError(f"method {method!r} cannot be used here: {reason}")
        if policy_budget(estimator, dist, budget) < estimator.min_budget():
            raise BudgetError(
                f"budget {budget:,} is too small for method {method!r}; it needs at least "
                f"{estimator.min_budget():,} model calls"
            )
    start = time.perf_counter()
    with runner.serving(model), _progress_bar(progress, budget, f"estimate ({method})") as on_calls:
        oracle = ScoreOracle(model, dist, spec, on_calls=on_calls)
        lm_calls_before = spent_calls(oracle)  # an LM-written D counts the messages its LM writes
        if method == "auto":
            chosen, outcome = run_auto(oracle, budget, generator, confidence)
            used = settings_of(build(chosen, {})) if chosen in available() else {}
        else:
            chosen, outcome = method, estimator.run(oracle, policy_budget(estimator, dist, budget), generator,
                                                    confidence)
            used = settings_of(estimator)
    seconds = time.perf_counter() - start
    low, high = outcome.ci
    if runner.name != "local":  # in-process runs keep the settings they always had
        used = {**used, "backend": runner.describe()}
    return Estimate(
        log10_p=to_log10(outcome.log_p),
        ci_log10=(to_log10(low), to_log10(high)),
        n_model_calls=spent_calls(oracle) - lm_calls_before,
        method=chosen,
        seconds=seconds,
        confidence=confidence,
        seed=seed_value,
        settings={**used, "chosen_by": "auto" if method == "auto" else "user"},
        diagnostics=outcome.diagnostics,
        warnings=outcome.warnings,
        heuristic=outcome.heuristic,
        trusted=outcome.trusted,
        assumes=outcome.assumes,
    )


def log_prob(
    model: nn.Module,
    dist: Distribution,
    spec: Spec,
    method: str = "moments",
    budget: int = 20_000,
    seed: int | torch.Generator = 0,
    **settings: Any,
) -> Tensor:
    """Differentiable natural-log probability of catastrophe, as a torch scalar.

    Gradients flow to the model's parameters and to D's parameters. ``moments``
    needs no samples; ``is`` adapts a proposal without gradients, then evaluates
    the smooth surrogate of the spec on fixed proposal draws.
    """
    _check_common(model, dist, spec)
    generator, _ = make_generator(seed)
    if isinstance(dist, Conditioned):
        return log_prob_conditioned(model, dist, spec, method, budget, generator, settings)
    estimator = build(method, settings)
    if not isinstance(estimator, DifferentiableEstimator):
        raise UnsupportedError(f"method {method!r} is not differentiable; use 'moments' or 'is'")
    reason = estimator.unsupported_reason(model, dist, spec)
    if reason is not None:
        raise UnsupportedError(f"method {method!r} cannot be used here: {reason}")
    with eval_mode(model):
        value = estimator.log_prob(model, dist, spec, budget, generator)
    if not math.isfinite(float(value.detach())):
        # -inf is legitimate (impossible event); NaN never is
        if math.isnan(float(value.detach())):
            raise UnsupportedError(f"method {method!r} produced NaN for this model and D")
    return value
