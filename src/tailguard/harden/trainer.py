"""``harden``: a classifier against a family of input distributions, on the one game loop.

Each step of the game (``harden.game``) the adversary, a pool of members of a
family (``harden.adversary.FamilyAdversary``), takes an ascent step on its
surrogate ln P[C]; the model then takes a gradient step on

    task loss + lam * mean_members max(ln P_hat_member[C], adversary_floor)
              + lam * deploy_weight * max(ln P_hat_D[C], deployment_floor)

(``harden.objective``), plus, with ``distill`` > 0, the distillation loss to
the starting model on the clean batch. The floors stop the model from buying ever larger
margins once a failure is negligible; they are settings, not ceilings on
safety: ln 1e-4 for the family's members (so the worst member is pushed below
the 1e-3 target, not left near 1e-2) and ln 1e-12 for the deployment
distribution (far below 1 / training-set size). At intervals the run is judged
by the validated estimators (``tailguard.estimate``) on held-out members of the
family and on the deployment distribution. After ``steps`` steps the run goes on
until a fresh search of the whole family, judged by plain sampling, finds no
member above ``family_target`` (``harden.family_check``), or ``extra_steps`` more
steps have passed. Runs checkpoint and resume exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..attack import (
    check_method,
    check_positive_float,
    check_positive_int,
    check_supported,
)
from ..dists.base import Distribution
from ..dists.lm import LMDistribution
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..estimate import estimate
from ..families.base import Family, Params
from ..oracle import ScoreOracle, eval_mode, model_dtype_device
from ..specs import Spec
from .adversary import ESTIMATORS, Adversary, Balance, FamilyAdversary, FixedAdversary, PoolSettings
from .family_check import FamilyCheck, check_resolution, target_met
from .game import Game, LoopSettings, Trace, other_configuration, recorded_config, train_loop
from .judge import JudgeSettings
from .judge import verdict as independent_verdict
from .objective import Objective
from .policy import ClassifierPolicy, check_examples
from .report import HardenReport


@dataclass(frozen=True)
class HardenSettings:
    """Hyper-parameters of a hardening run, with defaults that suit small image models.

    ``steps`` is the least number of steps; then a final phase of at most
    ``extra_steps`` (None: as many again) goes on until ``checks_to_pass`` family
    checks in a row, one every ``check_every`` steps and ``check_budget`` model
    calls each, find no member above ``family_target`` (natural log;
    ``harden.family_check``). ``distill`` weights the distillation loss to the
    starting model on the clean batches, at ``distill_temperature``
    (``harden.policy.ClassifierPolicy``). ``archive_size``: members that left the
    adversary's pool and are screened again at each refresh. ``balance_rate`` > 0
    lets the adversary term's weight (``lam``) follow the constraint that no pool
    member is above ``family_target``, between ``lam / balance_spread`` and
    ``lam * balance_ceiling`` (``harden.adversary.Balance``); 0 keeps it fixed.
    """

    steps: int = 600
    lam: float = 0.3
    deploy_weight: float = 1.0
    batch_size: int = 128
    lr: float = 1e-3
    pool_size: int = 6
    candidates: int = 72
    adversary_lr: float = 0.3
    samples: int = 128
    temperature: float = 0.25
    adversary_floor: float = -9.2
    deployment_floor: float = -28.0
    refresh_every: int = 10
    archive_size: int = 24
    distill: float = 1.0
    distill_temperature: float = 4.0
    balance_rate: float = 0.0
    balance_spread: float = 10.0
    balance_ceiling: float = 10.0
    extra_steps: int | None = None
    check_every: int = 50
    check_budget: int = 20_000
    checks_to_pass: int = 2
    family_target: float = -6.9
    eval_every: int = 100
    eval_budget: int = 20_000
    eval_method: str = "auto"
    held_out: int = 4
    checkpoint_every: int = 50
    deployment_estimator: str = "surrogate"
    judge_budget: int = JudgeSettings.budget
    judge_sampling_budget: int = JudgeSettings.sampling_budget
    judge_attack_budget: int = JudgeSettings.attack_budget
    judge_attack_method: str = JudgeSettings.attack_method

    def __post_init__(self) -> None:
        positive_ints = (
            "steps",
            "batch_size",
            "pool_size",
            "candidates",
            "samples",
            "refresh_every",
            "archive_size",
            "check_every",
            "check_budget",
            "checks_to_pass",
            "eval_every",
            "eval_budget",
            "checkpoint_every",
            "held_out",
        )
        for name in positive_ints:
            check_positive_int(getattr(self, name), name)
        for name in ("lam", "lr", "adversary_lr", "temperature", "distill_temperature"):
            check_positive_float(getattr(self, name), name)
        _check_finite(self.deploy_weight, "deploy_weight", at_least=0.0)
        _check_finite(self.distill, "distill", at_least=0.0)
        _check_finite(self.balance_rate, "balance_rate", at_least=0.0)
        _check_finite(self.balance_spread, "balance_spread", at_least=1.0)
        _check_finite(self.balance_ceiling, "balance_ceiling", at_least=1.0)
        _check_finite(self.family_target, "family_target")
        extra = self.extra_steps
        if extra is not None and (not isinstance(extra, int) or isinstance(extra, bool) or extra < 0):
            raise InvalidArgumentError(f"extra_steps must be None or an int >= 0, got {extra!r}")
        check_resolution(self.check_budget, self.family_target)
        for name in ("adversary_floor", "deployment_floor"):
            _check_finite(getattr(self, name), name)
        if self.pool_size > self.candidates:
            raise InvalidArgumentError("pool_size must not exceed candidates")
        check_method(self.eval_method, "eval_method", self.eval_budget)
        if self.deployment_estimator not in ESTIMATORS:
            known = ", ".join(ESTIMATORS)
            raise InvalidArgumentError(
                f"deployment_estimator must be one of {known}, got {self.deployment_estimator!r}"
            )
        self.judge()

    @property
    def most_steps(self) -> int:
        """``steps`` plus the final phase's ``extra_steps`` (None: as many again as ``steps``)."""
        return self.steps + (self.steps if self.extra_steps is None else self.extra_steps)

    def judge(self) -> JudgeSettings:
        """The settings of the independent verdict on the final model."""
        return JudgeSettings(self.judge_budget, self.judge_sampling_budget, self.judge_attack_budget,
                             self.judge_attack_method)


def _check_finite(value: Any, name: str, at_least: float = -math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
    if value < at_least:
        raise InvalidArgumentError(f"{name} must be >= {at_least:g}, got {value!r}")


@dataclass
class HardenResult:
    model: nn.Module
    report: HardenReport


def check_game(model: nn.Module, spec: Spec, family: Family) -> None:
    """Type checks shared by ``harden`` and its baselines, naming the offending argument."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(family, Family):
        raise InvalidArgumentError(f"family must be a tailguard Family, got {type(family).__name__}")
    if not isinstance(spec, Spec):
        raise InvalidArgumentError(f"spec must be a tailguard spec, got {type(spec).__name__}")


def reject_unknown_settings(kind: type, settings: dict[str, Any], label: str) -> None:
    """InvalidArgumentError for keys that are not fields of the settings dataclass ``kind``."""
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InvalidArgumentError(
            f"{label} has no setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def check_harden_arguments(
    seed: Any, settings: dict[str, Any], checkpoint_dir: Any, resume: Any
) -> HardenSettings:
    """Every argument of ``harden`` that needs no model or data, checked before any training.

    The CLI calls it before it builds (and trains) a task's model, so a bad option
    fails in a second. A resume whose checkpoint is missing, or was written with
    other settings or another seed, is refused here too.
    """
    reject_unknown_settings(HardenSettings, settings, "harden")
    cfg = HardenSettings(**settings)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidArgumentError(f"seed must be an int, got {seed!r}")
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, str | Path):
        raise InvalidArgumentError(f"checkpoint_dir must be a str or Path, got {checkpoint_dir!r}")
    if not isinstance(resume, bool):
        raise InvalidArgumentError(f"resume must be True or False, got {resume!r}")
    if resume:
        if checkpoint_dir is None:
            raise InvalidArgumentError("resume=True needs checkpoint_dir")
        recorded = recorded_config(Path(checkpoint_dir)) or {}
        if recorded.get("settings") != dataclasses.asdict(cfg) or recorded.get("seed") != seed:
            raise other_configuration(Path(checkpoint_dir))
    return cfg


def _check_train(data: Any, family: Family, model: nn.Module, name: str = "train") -> tuple[Tensor, Tensor]:
    """(X, y) with one row of y per input of the family's shape; y as class indices (long).

    Continuous inputs are given the model's dtype; integer inputs (token ids) stay as they are.
    """
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise InvalidArgumentError(f"{name} must be a pair (X, y)")
    x, y = (torch.as_tensor(t) for t in data)
    check_examples(x, y, name)
    if tuple(x.shape[1:]) != family.event_shape:
        raise ShapeMismatchError(
            f"{name} X has inputs of shape {tuple(x.shape[1:])}; the family's are {family.event_shape}"
        )
    if x.is_floating_point():
        x = x.to(model_dtype_device(model)[0])
    if y.dim() != 1:
        raise ShapeMismatchError(f"{name} y must be class indices of shape (n,), got {tuple(y.shape)}")
    if y.is_floating_point() and not bool(torch.isfinite(y).all() and (y == y.round()).all()):
        raise InvalidArgumentError(f"{name} y must be whole class indices, got values such as "
                                   f"{y[~(y == y.round())].flatten()[0].item():.4g}")
    return x, y.long()


def check_labels_fit(model: nn.Module, **labelled: tuple[Tensor, Tensor] | None) -> None:
    """Every label a class index of the model's outputs (one model call), or a named error.

    Out of range, a label would reach the cross-entropy as an IndexError from deep in torch.
    """
    pairs = {name: pair for name, pair in labelled.items() if pair is not None}
    if not pairs:
        return
    with torch.no_grad(), eval_mode(model):
        classes = model(next(iter(pairs.values()))[0][:1]).shape[-1]
    for name, (_, y) in pairs.items():
        if bool((y < 0).any() or (y >= classes).any()):
            raise InvalidArgumentError(
                f"{name} y holds class indices in [{int(y.min())}, {int(y.max())}]; the model has "
                f"{classes} outputs, so they must be in [0, {classes - 1}]")


def _held_out_members(family: Family, n: int, seed: int) -> list[Params]:
    """Random members, fixed for the run and never shown to the adversary."""
    g = torch.Generator().manual_seed(seed + 7919)
    pool = family.candidates(max(n, 64), g)
    order = torch.randperm(len(pool), generator=g)[:n]
    return [pool[int(i)] for i in order]


def _estimate_dict(est: Any) -> dict[str, Any]:
    return {
        "log10_p": est.log10_p,
        "ci_log10": list(est.ci_log10),
        "method": est.method,
        "n_model_calls": est.n_model_calls,
        "trusted": est.trusted,
        "warnings": list(est.warnings),
    }


def _check_deployment(deployment: Any, family: Family) -> None:
    if not isinstance(deployment, Distribution):
        raise InvalidArgumentError(
            f"deployment must be a tailguard distribution, got {type(deployment).__name__}"
        )
    if deployment.event_shape != family.event_shape:
        raise ShapeMismatchError(
            f"deployment inputs have shape {deployment.event_shape}; the family's are {family.event_shape}"
        )


def held_out_evaluation(
    model: nn.Module,
    spec: Spec,
    family: Family,
    held_out: list[Params],
    deployment: Distribution | None,
    test: tuple[Tensor, Tensor] | None,
    method: str,
    budget: int,
) -> Callable[[int], dict[str, Any]]:
    """The periodic evaluation of a run: test accuracy, validated estimates on held-out members and D."""

    def evaluate(step: int) -> dict[str, Any]:
        model.eval()
        ev: dict[str, Any] = {"step": step}
        if test is not None:
            with torch.no_grad():
                ev["test_accuracy"] = float((model(test[0]).argmax(1) == test[1]).float().mean())
        ev["held_out"] = [
            {**_estimate_dict(estimate(model, family.member(p), spec, method, budget, seed=step + i)),
             "member": family.describe(p)}
            for i, p in enumerate(held_out)
        ]
        if deployment is not None:
            ev["deployment"] = _estimate_dict(estimate(model, deployment, spec, method, budget, seed=step))
        return ev

    return evaluate


def probe(oracle: ScoreOracle, family: Family, params: Params) -> None:
    """Two inputs of one member through the model: a model that cannot take them fails here, by name."""
    member = family.member(params)
    with torch.no_grad():
        oracle.scores(member.sample(2, torch.Generator()), member)


def harden(
    model: nn.Module,
    train: tuple[Tensor, Tensor] | Tensor,
    spec: Spec,
    family: Family | LMDistribution,
    seed: int = 0,
    deployment: Distribution | None = None,
    test: tuple[Tensor, Tensor] | Tensor | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    **settings: Any,
) -> HardenResult:
    """Train a copy of ``model`` on ``train`` against the worst members of ``family``.

    ``deployment`` (optional) is the distribution the model will meet (any
    tailguard Distribution); its estimated catastrophe probability is both
    descended and reported. ``test`` (X, y) gives clean accuracy at each
    evaluation. With ``checkpoint_dir``, state is saved every
    ``checkpoint_every`` steps and ``resume=True`` continues from the last
    checkpoint. Settings: see HardenSettings. An LM policy (``tailguard.lm.NextTokenLogits``)
    against an LM adversary (an ``LMDistribution``), ``train`` its ordinary message ids,
    plays the LM game instead: ``tailguard.lm.harden.harden_language_model``.
    """
    from ..lm.harden import harden_language_model, plays_language_model  # it builds on this module

    if plays_language_model(family, model):
        return harden_language_model(model, train, spec, family, seed, deployment, test, checkpoint_dir,
                                     resume, progress, **settings)
    check_game(model, spec, family)
    cfg = check_harden_arguments(seed, settings, checkpoint_dir, resume)
    train = _check_train(train, family, model)
    test = None if test is None else _check_train(test, family, model, "test")
    judged = [family.member(family.candidates(1, torch.Generator())[0])]
    if deployment is not None:
        _check_deployment(deployment, family)
        judged.append(deployment)
    for dist in judged:
        check_supported(cfg.eval_method, model, dist, spec, "eval_method")
    trained = copy.deepcopy(model)
    oracle = ScoreOracle.for_model(trained, spec)
    held_out = _held_out_members(family, cfg.held_out, seed)
    probe(oracle, family, held_out[0])
    check_labels_fit(trained, train=train, test=test)
    pool = PoolSettings(cfg.pool_size, cfg.candidates, cfg.samples, cfg.temperature, cfg.adversary_lr,
                        cfg.refresh_every, cfg.archive_size)
    balance = (Balance(cfg.family_target, cfg.balance_rate, cfg.balance_spread, cfg.balance_ceiling)
               if cfg.balance_rate else None)
    worst = FamilyAdversary("adversary", family, oracle, pool, cfg.adversary_floor, balance=balance)
    adversaries: list[Adversary] = [worst]
    if deployment is not None:
        adversaries.append(FixedAdversary("deployment", deployment, oracle, cfg.samples, cfg.temperature,
                                          cfg.deployment_floor, cfg.deploy_weight, cfg.deployment_estimator))
    teacher = copy.deepcopy(model) if cfg.distill else None
    policy = ClassifierPolicy(trained, *train, cfg.batch_size, teacher=teacher, distill=cfg.distill,
                              distill_temperature=cfg.distill_temperature)
    game = Game(policy, adversaries, Objective(cfg.lam),
                oracle=oracle)
    evaluate = held_out_evaluation(trained, spec, family, held_out, deployment, test, cfg.eval_method,
                                   cfg.eval_budget)
    fingerprint = {**config_fingerprint(cfg, seed, spec, family, train), "deployment": repr(deployment)}
    check = FamilyCheck(trained, spec, family, worst, cfg.check_budget, cfg.family_target, seed)
    most = cfg.most_steps
    with _steps_progress(progress, most) as advance:

        def on_step(done: int, row: dict[str, Any]) -> dict[str, Any] | None:
            advance(done, row)
            checking = most > cfg.steps and done >= cfg.steps and (done - cfg.steps) % cfg.check_every == 0
            if not (checking or done % cfg.eval_every == 0 or done in (cfg.steps, most)):
                return None
            evaluation = evaluate(done)
            if checking:
                evaluation["family_check"] = check(done)
            return evaluation

        def stop(trace: Trace) -> bool:
            return len(trace.steps) >= cfg.steps and target_met(trace.evals, cfg.checks_to_pass)

        trace = train_loop(game, LoopSettings(most, cfg.lr, cfg.checkpoint_every), seed, fingerprint,
                           checkpoint_dir, resume, on_step, stop)
    trained.eval()
    found = {"training adversary's worst member": family.member(worst.worst(torch.Generator()))}
    verdict = final_verdict(trained, spec, family, held_out, deployment, cfg, seed, found)
    report = HardenReport(settings=dataclasses.asdict(cfg), constraint=family.constraint(), seed=seed,
                          steps=trace.steps, evals=trace.evals, seconds=trace.seconds,
                          model_calls=game.model_calls + checks_calls(trace.evals), verdict=verdict)
    return HardenResult(model=trained, report=report)


def checks_calls(evals: list[dict[str, Any]]) -> int:
    """Model calls the family checks of a run spent (kept in its evaluations, so a resume counts them)."""
    return sum(ev["family_check"]["n_model_calls"] for ev in evals if "family_check" in ev)


def final_verdict(model: nn.Module, spec: Spec, family: Family, held_out: list[Params],
                  deployment: Distribution | None, cfg: HardenSettings, seed: int,
                  found: dict[str, Distribution] | None = None) -> dict[str, Any]:
    """The independent verdict of a run's final model: on ``found`` (what its adversary ended on),
    the held-out members and D, and fresh attacks on the family (seeds training never used)."""
    dists = dict(found or {})
    dists.update({f"held-out member {i + 1}": family.member(p) for i, p in enumerate(held_out)})
    if deployment is not None:
        dists["deployment"] = deployment
    return independent_verdict(model, spec, dists, family, cfg.judge(), seed + 104729)


def config_fingerprint(cfg: Any, seed: int, spec: Spec, family: Family, train: tuple[Tensor, Tensor]
                       ) -> dict[str, Any]:
    """What identifies a run for a resume (JSON data, as a checkpoint gives it back)."""
    return {"settings": dataclasses.asdict(cfg), "seed": seed, "spec": repr(spec),
            "constraint": family.constraint(), "train_rows": int(train[0].shape[0])}


@contextmanager
def _steps_progress(enabled: bool, total: int) -> Iterator[Callable[[int, dict[str, Any]], None]]:
    """A rich progress bar over training steps showing the adversary's surrogate log10 p."""
    if not enabled:
        yield lambda done, row: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        "[bold]harden",
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    ) as bar:
        task = bar.add_task("harden", total=total, completed=0, info="")

        def advance(done: int, row: dict[str, Any]) -> None:
            info = f"loss {row['task_loss']:.3f}  adversary log10 p {row['adversary_log10_p']:.2f}"
            bar.update(task, completed=done, info=info)

        yield advance
