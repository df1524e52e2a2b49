"""``attack``: find the member of a family on which the model is most likely catastrophic.

The search maximises a differentiable estimate of ln P_{D_theta}[C]: the log of
the mean smooth surrogate exp(spec.soft) over reparameterised draws from
D_theta (``harden.objective.member_log_prob``, the value the defender
descends). Many starting members are screened cheaply, the best few are refined
by Adam, and the winner's probability is then estimated properly (with a CI)
by ``tailguard.estimate``. By the identity P_D[C] = E_q[(p_D/q) C], the member
found is also a natural importance-sampling proposal for the deployment D.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .dists.base import Distribution
from .errors import BudgetError, InvalidArgumentError, UnsupportedError
from .estimate import estimate, make_generator
from .estimators.base import build
from .families.base import Family, Params, detach_params
from .harden.objective import member_log_prob
from .oracle import ScoreOracle, eval_mode
from .result import Estimate
from .specs import Spec


@dataclass(frozen=True)
class AttackSettings:
    """Hyper-parameters of the search (data arrive at call time)."""

    candidates: int = 72
    restarts: int = 4
    steps: int = 40
    samples: int = 256
    lr: float = 0.3
    temperature: float = 1.0
    final_fraction: float = 0.3
    method: str = "auto"

    def __post_init__(self) -> None:
        for name in ("candidates", "restarts", "steps", "samples"):
            check_positive_int(getattr(self, name), name)
        if self.restarts > self.candidates:
            raise InvalidArgumentError("restarts must not exceed candidates")
        if not 0 < self.final_fraction < 1:
            raise InvalidArgumentError(
                f"final_fraction must be in (0, 1), got {self.final_fraction}"
            )
        for name in ("lr", "temperature"):
            check_positive_float(getattr(self, name), name)
        check_method(self.method, "method")


def check_positive_int(value: Any, name: str) -> int:
    """``value`` if it is an int >= 1 (bools refused), else InvalidArgumentError naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
    return value


def check_positive_float(value: Any, name: str) -> float:
    """``value`` as a float if it is a finite number > 0, else InvalidArgumentError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise InvalidArgumentError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_method(method: Any, name: str, budget: int | None = None) -> None:
    """A known estimator (or "auto") that can run on ``budget`` calls; checked before any training."""
    if method == "auto":
        return
    if not isinstance(method, str):
        raise InvalidArgumentError(f"{name} must be an estimator name, got {method!r}")
    try:
        estimator = build(method, {})
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{name}: {exc}") from exc
    if budget is not None and budget < estimator.min_budget():
        raise BudgetError(
            f"{name} {method!r} needs at least {estimator.min_budget():,} model calls, "
            f"but its budget is {budget:,}"
        )


def check_supported(method: str, model: nn.Module, dist: Distribution, spec: Spec, name: str) -> None:
    """UnsupportedError now, not after a search or training, if ``method`` cannot estimate here."""
    if method == "auto":
        return
    reason = build(method, {}).unsupported_reason(model, dist, spec)
    if reason is not None:
        raise UnsupportedError(f"{name} {method!r} cannot be used here: {reason}")


def check_attack_arguments(budget: Any, seed: Any, settings: dict[str, Any]) -> AttackSettings:
    """Every argument of ``attack`` but the model, spec and family, checked before any model call.

    The CLI calls it before it builds (and trains) a task's model, so a bad option
    fails in a second rather than after the training.
    """
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise BudgetError(f"budget must be a positive int, got {budget!r}")
    make_generator(seed)
    try:
        cfg = AttackSettings(**settings)
    except TypeError as exc:
        raise InvalidArgumentError(f"unknown attack setting: {exc}") from exc
    _split_budget(budget, cfg)
    return cfg


def _split_budget(budget: int, cfg: AttackSettings) -> tuple[int, int, int]:
    """(final estimate's budget, draws per screened candidate, refinement steps) for ``budget``."""
    final_budget = int(budget * cfg.final_fraction)
    search_budget = budget - final_budget
    screen_n = max(16, int(0.3 * search_budget / cfg.candidates))
    steps = min(cfg.steps, int(0.7 * search_budget / (cfg.restarts * cfg.samples)))
    if steps < 1 or screen_n * cfg.candidates > 0.3 * search_budget + cfg.candidates:
        raise BudgetError(
            f"budget {budget:,} is too small to screen {cfg.candidates} candidates and refine "
            f"{cfg.restarts} of them with {cfg.samples} samples a step; raise budget or lower these"
        )
    check_method(cfg.method, "method", final_budget)
    return final_budget, screen_n, steps


@dataclass
class AttackResult:
    """The worst member found, its estimated catastrophe probability, and how it was found."""

    family: Family
    params: Params
    dist: Distribution
    estimate: Estimate
    n_model_calls: int
    history: list[list[float]] = field(default_factory=list)

    def samples(self, n: int, seed: int = 0) -> Tensor:
        """``n`` inputs drawn from the adversarial distribution, (n, *event_shape)."""
        return self.dist.sample(n, torch.Generator().manual_seed(seed))

    def summary(self) -> dict[str, Any]:
        return {
            "member": self.family.describe(self.params),
            "constraint": self.family.constraint(),
            "estimate": str(self.estimate),
            "log10_p": self.estimate.log10_p,
            "ci_log10": list(self.estimate.ci_log10),
            "n_model_calls": self.n_model_calls,
        }


def refine(
    oracle: ScoreOracle,
    family: Family,
    params: Params,
    settings: AttackSettings,
    steps: int,
    generator: torch.Generator,
) -> tuple[Params, list[float]]:
    """Adam ascent on the surrogate from ``params``; returns the best iterate and the trace."""
    leaves = [p for p in params.values() if p.requires_grad]
    opt = torch.optim.Adam(leaves, lr=settings.lr)
    best, best_value, trace = detach_params(params), -math.inf, []
    for _ in range(steps):
        before = detach_params(params)
        value = member_log_prob(oracle, family, params, settings.samples, settings.temperature, generator)
        trace.append(float(value.detach()))
        if trace[-1] > best_value:
            best_value, best = trace[-1], before
        grads = torch.autograd.grad(-value, leaves)
        for leaf, g in zip(leaves, grads, strict=True):
            leaf.grad = g
        opt.step()
        with torch.no_grad():
            family.project(params)
    for k, v in best.items():
        if params[k].requires_grad:
            v.requires_grad_(True)
    return best, trace


def attack(
    model: nn.Module,
    spec: Spec,
    family: Family,
    budget: int = 200_000,
    seed: int | torch.Generator = 0,
    progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    **settings: Any,
) -> AttackResult:
    """Search ``family`` for the D on which ``model`` is most likely catastrophic under ``spec``.

    ``budget`` caps model calls for search and final estimate together. Settings:
    see AttackSettings (candidates, restarts, steps, samples, lr, temperature,
    final_fraction, method).
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(family, Family):
        raise InvalidArgumentError(
            f"family must be a tailguard Family, got {type(family).__name__}"
        )
    if not isinstance(spec, Spec):
        raise InvalidArgumentError(f"spec must be a tailguard spec, got {type(spec).__name__}")
    if on_step is not None and not callable(on_step):
        raise InvalidArgumentError(f"on_step must be callable, got {type(on_step).__name__}")
    cfg = check_attack_arguments(budget, seed, settings)
    final_budget, screen_n, steps = _split_budget(budget, cfg)
    generator, _ = make_generator(seed)
    starts = family.candidates(cfg.candidates, generator)
    check_supported(cfg.method, model, family.member(starts[0]), spec, "method")
    oracle = ScoreOracle.for_model(model, spec)
    history: list[list[float]] = []
    with eval_mode(model):
        with torch.no_grad():
            screen = [
                float(member_log_prob(oracle, family, p, screen_n, cfg.temperature, generator))
                for p in starts
            ]
        order = sorted(range(len(starts)), key=lambda i: -screen[i])[: cfg.restarts]
        best_params, best_value = starts[order[0]], -math.inf
        for i in order:
            params, trace = refine(oracle, family, starts[i], cfg, steps, generator)
            history.append(trace)
            if on_step is not None:
                on_step(len(history), max(trace))
            if max(trace) > best_value:
                best_params, best_value = params, max(trace)
    dist = family.member(detach_params(best_params))
    est = estimate(
        model, dist, spec, method=cfg.method, budget=final_budget, seed=generator, progress=progress
    )
    return AttackResult(
        family=family,
        params=detach_params(best_params),
        dist=dist,
        estimate=est,
        n_model_calls=oracle.n_calls + est.n_model_calls,
        history=history,
    )
