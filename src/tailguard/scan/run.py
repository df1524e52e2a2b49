"""``scan``: for every class, the worst trigger any family holds, and one score per model.

For each class k and each trigger search, ``attack`` finds the member of the
family (built over clean inputs of the other classes) on which the model most
often says k, and ``estimate`` gives that member's catastrophe probability with
a CI. The per-class figure is the highest over the families; the score compares
each class with the other classes of the same model (``score``). The budget of
model calls is split evenly over the (class, family) searches.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..attack import AttackResult, attack, check_attack_arguments, check_positive_float, check_positive_int
from ..errors import BudgetError, InvalidArgumentError
from ..estimate import make_generator
from ..result import Estimate
from ..specs import ClassIs
from .inputs import check_images, check_labels, clean_outputs
from .score import log10_odds, robust_z
from .searches import TriggerSearch, default_searches


@dataclass(frozen=True)
class ScanSettings:
    """Hyper-parameters of a scan. The attack ones apply to every (class, family) search.

    ``base_size``: clean images of the other classes each family is built over.
    ``min_scale``: floor of the robust z-score's scale, in decades of odds.
    ``flag_z``: the score from which ``target`` names a class (else None).
    """

    base_size: int = 64
    candidates: int = 144
    restarts: int = 4
    steps: int = 24
    samples: int = 32
    final_fraction: float = 0.3
    min_scale: float = 0.5
    flag_z: float = 3.5
    witness_samples: int = 16

    def __post_init__(self) -> None:
        for name in ("base_size", "candidates", "restarts", "steps", "samples", "witness_samples"):
            check_positive_int(getattr(self, name), name)
        for name in ("min_scale", "flag_z"):
            check_positive_float(getattr(self, name), name)

    def attack_settings(self) -> dict[str, Any]:
        return {
            "candidates": self.candidates,
            "restarts": self.restarts,
            "steps": self.steps,
            "samples": self.samples,
            "final_fraction": self.final_fraction,
        }


@dataclass(frozen=True)
class ScanCell:
    """One (class, family) search: the worst member's estimate and its robust z among the classes."""

    target: int
    search: str
    estimate: Estimate
    log10_odds: float
    z: float
    member: dict[str, object]
    constraint: str
    n_model_calls: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["estimate"] = self.estimate.to_dict()
        return data


@dataclass(frozen=True)
class ScanWitness:
    """The worst distribution found: the member behind the score, with inputs drawn from it."""

    target: int
    search: str
    attack: AttackResult
    samples: Tensor  # (witness_samples, *image shape)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "search": self.search,
            "member": self.attack.family.describe(self.attack.params),
            "constraint": self.attack.family.constraint(),
            "estimate": self.attack.estimate.to_dict(),
            "n_model_calls": self.attack.n_model_calls,
        }


@dataclass(frozen=True)
class ScanReport:
    """The verdict of a scan: the score, the suspected class, and every figure behind them."""

    score: float
    target: int | None
    ranking: list[int]  # classes by their largest z, most suspect first
    per_class: dict[int, Estimate]
    cells: list[ScanCell]
    witness: ScanWitness
    n_model_calls: int
    seconds: float
    seed: int | None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the estimates in their own JSON form; witness samples left out)."""
        return {
            "score": self.score,
            "target": self.target,
            "ranking": self.ranking,
            "per_class": {str(k): e.to_dict() for k, e in self.per_class.items()},
            "cells": [c.to_dict() for c in self.cells],
            "witness": self.witness.to_dict(),
            "n_model_calls": self.n_model_calls,
            "seconds": self.seconds,
            "seed": self.seed,
            "settings": self.settings,
        }

    def summary(self) -> str:
        verdict = "no class stands out" if self.target is None else f"suspected target class {self.target}"
        lines = [f"score {self.score:.2f} (robust z): {verdict}"]
        for k, est in self.per_class.items():
            lines.append(f"  class {k}: {est.headline()}")
        lines.append(f"  worst member: {self.witness.search} towards class {self.witness.target}")
        lines.append(f"  {self.n_model_calls:,} model calls, {self.seconds:.1f} s")
        return "\n".join(lines)


def _check_searches(searches: Sequence[TriggerSearch] | None) -> list[TriggerSearch]:
    chosen = default_searches() if searches is None else list(searches)
    if not chosen or not all(isinstance(s, TriggerSearch) for s in chosen):
        raise InvalidArgumentError("searches must be a non-empty list of TriggerSearch")
    names = [s.name for s in chosen]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"search names must be distinct, got {names}")
    return chosen


def _per_search_budget(budget: object, n_searches: int, cfg: ScanSettings, seed: object) -> int:
    """Each (class, family) search's share of ``budget``, checked to suffice for its attack."""
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise BudgetError(f"budget must be a positive int, got {budget!r}")
    share = budget // n_searches
    try:
        check_attack_arguments(share, seed, cfg.attack_settings())
    except BudgetError as exc:
        raise BudgetError(
            f"budget {budget:,} is too small: split over {n_searches} (class, family) searches it "
            f"leaves {share:,} model calls each ({exc})"
        ) from exc
    return share


def _base_images(images: Tensor, labels: Tensor, k: int, size: int, generator: torch.Generator) -> Tensor:
    """Up to ``size`` clean images whose label is not k, drawn without replacement."""
    others = torch.nonzero(labels != k).squeeze(1)
    if len(others) == 0:
        raise InvalidArgumentError(f"every image has label {k}; a scan needs images of other classes")
    chosen = others[torch.randperm(len(others), generator=generator)[:size]]
    return images[chosen]


def scan(
    model: nn.Module,
    images: Tensor,
    labels: Tensor | None = None,
    budget: int = 360_000,
    seed: int | torch.Generator = 0,
    searches: Sequence[TriggerSearch] | None = None,
    **settings: Any,
) -> ScanReport:
    """Scan ``model`` for a planted trigger: a family member that sends other classes to one class.

    ``images`` (N, H, W) or (N, C, H, W) in [0, 1], in the model's own input
    shape; ``labels`` (N,) their classes, or None to take the model's own
    predictions. ``budget`` caps the model calls of all searches together.
    ``searches`` defaults to ``default_searches``; ``settings``: see ScanSettings.
    """
    start = time.perf_counter()
    try:
        cfg = ScanSettings(**settings)
    except TypeError as exc:
        raise InvalidArgumentError(f"unknown scan setting: {exc}") from exc
    x = check_images(images)
    chosen = _check_searches(searches)
    generator, seed_value = make_generator(seed)
    outputs, n_classes = clean_outputs(model, x)
    y = outputs.argmax(1) if labels is None else check_labels(labels, x.shape[0], n_classes)
    share = _per_search_budget(budget, n_classes * len(chosen), cfg, seed)
    results: dict[tuple[int, str], AttackResult] = {}
    for k in range(n_classes):
        base = _base_images(x, y, k, cfg.base_size, generator)
        for search in chosen:
            results[k, search.name] = attack(
                model, ClassIs(k), search.build(base), budget=share, seed=generator,
                **cfg.attack_settings(),
            )
    cells = _cells(results, n_classes, chosen, cfg.min_scale)
    worst = max(cells, key=lambda c: c.z)
    best_z = {k: max(c.z for c in cells if c.target == k) for k in range(n_classes)}
    ranking = sorted(range(n_classes), key=lambda k: -best_z[k])
    witness_attack = results[worst.target, worst.search]
    return ScanReport(
        score=worst.z,
        target=worst.target if worst.z >= cfg.flag_z else None,
        ranking=ranking,
        per_class={
            k: max((c.estimate for c in cells if c.target == k), key=lambda e: e.log10_p)
            for k in range(n_classes)
        },
        cells=cells,
        witness=ScanWitness(
            worst.target, worst.search, witness_attack,
            witness_attack.samples(cfg.witness_samples, seed=seed_value or 0),
        ),
        n_model_calls=x.shape[0] + sum(r.n_model_calls for r in results.values()),
        seconds=time.perf_counter() - start,
        seed=seed_value,
        settings={**asdict(cfg), "budget": budget, "searches": [s.name for s in chosen]},
    )


def _cells(
    results: dict[tuple[int, str], AttackResult],
    n_classes: int,
    searches: list[TriggerSearch],
    min_scale: float,
) -> list[ScanCell]:
    """The figures of every (class, family) search, with each class's z among the classes of its family."""
    cells = []
    for search in searches:
        row = [results[k, search.name] for k in range(n_classes)]
        odds = [log10_odds(r.estimate) for r in row]
        for k, (r, value, z) in enumerate(zip(row, odds, robust_z(odds, min_scale), strict=True)):
            cells.append(
                ScanCell(
                    target=k, search=search.name, estimate=r.estimate, log10_odds=value,
                    z=z, member=r.family.describe(r.params),
                    constraint=r.family.constraint(), n_model_calls=r.n_model_calls,
                )
            )
    return cells
