"""``harden``: train a model against an adversary by descending its estimated log P[C].

Each step is one round of a two-player game. The adversary (a pool of members
of a family) takes an ascent step on its surrogate ln P[C]; the model then
takes a gradient step on

    task loss + lam * mean_members max(ln P_hat_member[C], adversary_floor)
              + lam * deploy_weight * max(ln P_hat_D[C], deployment_floor)

where ln P_hat is the differentiable surrogate of ``attack.surrogate_log_prob``.
The floors stop the model from buying ever larger margins once a failure is
negligible. The adversary's floor is the higher one (about 1e-2 by default):
a family member may legitimately resemble the catastrophe class (a patch can
close the loop of a 6), and demanding 1e-12 there would cost clean accuracy;
the deployment distribution gets the far lower floor (about 1e-12). At
intervals the run is judged by the validated estimators (``tailguard.estimate``)
on held-out members of the family and on the deployment distribution. Runs checkpoint and resume exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._logspace import LN10
from ..attack import (
    check_method,
    check_positive_float,
    check_positive_int,
    check_supported,
    surrogate_log_prob,
)
from ..dists.base import Distribution
from ..errors import InvalidArgumentError, ShapeMismatchError, TrainingDivergedError
from ..estimate import estimate
from ..families.base import Family, Params
from ..oracle import ScoreOracle
from ..specs import Spec
from .adversary import AdversaryPool
from .checkpoint import flatten_optimizer, load_checkpoint, save_checkpoint, unflatten_optimizer
from .report import HardenReport


@dataclass(frozen=True)
class HardenSettings:
    """Hyper-parameters of a hardening run, with defaults that suit small image models."""

    steps: int = 600
    lam: float = 0.1
    deploy_weight: float = 1.0
    batch_size: int = 128
    lr: float = 1e-3
    pool_size: int = 6
    candidates: int = 72
    adversary_lr: float = 0.3
    samples: int = 128
    temperature: float = 0.25
    adversary_floor: float = -4.6
    deployment_floor: float = -28.0
    refresh_every: int = 10
    eval_every: int = 100
    eval_budget: int = 20_000
    eval_method: str = "auto"
    held_out: int = 4
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        positive_ints = (
            "steps",
            "batch_size",
            "pool_size",
            "candidates",
            "samples",
            "refresh_every",
            "eval_every",
            "eval_budget",
            "checkpoint_every",
            "held_out",
        )
        for name in positive_ints:
            check_positive_int(getattr(self, name), name)
        for name in ("lam", "lr", "adversary_lr", "temperature"):
            check_positive_float(getattr(self, name), name)
        _check_finite(self.deploy_weight, "deploy_weight", at_least=0.0)
        for name in ("adversary_floor", "deployment_floor"):
            _check_finite(getattr(self, name), name)
        if self.pool_size > self.candidates:
            raise InvalidArgumentError("pool_size must not exceed candidates")
        check_method(self.eval_method, "eval_method", self.eval_budget)


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
        recorded = load_checkpoint(Path(checkpoint_dir))[1].get("config", {})
        if recorded.get("settings") != dataclasses.asdict(cfg) or recorded.get("seed") != seed:
            raise _other_configuration(Path(checkpoint_dir))
    return cfg


def _other_configuration(directory: Path) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"the checkpoint in {directory} was written by a run with a different configuration; "
        "resume with the same settings, seed, spec, family and data, or use a new directory"
    )


def _check_train(data: Any, family: Family, name: str = "train") -> tuple[Tensor, Tensor]:
    """(X, y) with one row of y per input of the family's shape, as (float, long) tensors."""
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise InvalidArgumentError(f"{name} must be a pair (X, y)")
    x, y = (torch.as_tensor(t) for t in data)
    if x.dim() == 0 or y.dim() == 0:
        raise ShapeMismatchError(f"{name} X and y need a row per example; got scalars")
    if x.shape[0] != y.shape[0]:
        raise ShapeMismatchError(f"{name} X has {x.shape[0]} rows but y has {y.shape[0]}")
    if tuple(x.shape[1:]) != family.event_shape:
        raise ShapeMismatchError(
            f"{name} X has inputs of shape {tuple(x.shape[1:])}; the family's are {family.event_shape}"
        )
    return x.float(), y.long()


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


class _Run:
    """Mutable state of one hardening run (model, optimisers, adversary, RNG, report)."""

    def __init__(
        self,
        model: nn.Module,
        spec: Spec,
        family: Family,
        train: tuple[Tensor, Tensor],
        cfg: HardenSettings,
        seed: int,
        deployment: Distribution | None,
        test: tuple[Tensor, Tensor] | None,
    ):
        self.model, self.spec, self.family, self.cfg = model, spec, family, cfg
        self.x, self.y = train
        self.deployment, self.test = deployment, test
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.oracle = ScoreOracle(
            model, family.member(family.candidates(1, torch.Generator())[0]), spec
        )
        self.held_out = _held_out_members(family, cfg.held_out, seed)
        self.report = HardenReport(
            settings=dataclasses.asdict(cfg), constraint=family.constraint(), seed=seed
        )
        self.step = 0
        self.pool: AdversaryPool | None = None

    def config_fingerprint(self) -> dict[str, Any]:
        return {
            "settings": dataclasses.asdict(self.cfg),
            "seed": self.report.seed,
            "spec": repr(self.spec),
            "constraint": self.family.constraint(),
            "train_rows": int(self.x.shape[0]),
        }

    # --- one step of the game ------------------------------------------------------------------
    def start_adversary(self) -> None:
        cfg = self.cfg
        self.model.eval()
        self.pool = AdversaryPool.screened(
            self.family,
            self.oracle,
            cfg.pool_size,
            cfg.candidates,
            cfg.samples,
            cfg.temperature,
            cfg.adversary_lr,
            self.generator,
        )

    def game_step(self) -> dict[str, float]:
        cfg, pool = self.cfg, self.pool
        assert pool is not None
        self.model.eval()
        values = pool.ascend(self.oracle, cfg.samples, cfg.temperature, self.generator)
        if self.step % cfg.refresh_every == 0:
            pool.refresh(
                self.oracle,
                values,
                cfg.candidates // 4 or 1,
                cfg.samples // 2 or 1,
                cfg.temperature,
                self.generator,
            )
        self.model.train()
        idx = torch.randint(self.x.shape[0], (cfg.batch_size,), generator=self.generator)
        logits = self.model(self.x[idx])
        task = nn.functional.cross_entropy(logits, self.y[idx])
        adv = pool.log_probs(self.oracle, cfg.samples, cfg.temperature, self.generator, frozen=True)
        risk = adv.clamp(min=cfg.adversary_floor).mean()
        row: dict[str, float] = {"step": self.step}
        if self.deployment is not None:
            dep_value = surrogate_log_prob(
                self.oracle,
                _AsFamily(self.deployment),
                {},
                cfg.samples,
                cfg.temperature,
                self.generator,
            )
            risk = risk + cfg.deploy_weight * dep_value.clamp(min=cfg.deployment_floor)
            row["deployment_log10_p"] = float(dep_value.detach()) / LN10
        loss = task + cfg.lam * risk
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"loss became {float(loss)} at step {self.step} (task {float(task):.4g}); "
                "lower lr or lam; the last good checkpoint is kept"
            )
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise TrainingDivergedError(
                f"model weights became NaN or inf at step {self.step}; lower lr or lam; "
                "the last good checkpoint is kept"
            )
        row["task_loss"] = float(task.detach())
        row["batch_accuracy"] = float((logits.argmax(1) == self.y[idx]).float().mean())
        row["adversary_log10_p"] = float(adv.detach().max()) / LN10
        return row

    def evaluate(self) -> dict[str, Any]:
        cfg = self.cfg
        self.model.eval()
        ev: dict[str, Any] = {"step": self.step}
        if self.test is not None:
            with torch.no_grad():
                ev["test_accuracy"] = float(
                    (self.model(self.test[0]).argmax(1) == self.test[1]).float().mean()
                )
        ev["held_out"] = [
            {
                **_estimate_dict(
                    estimate(
                        self.model,
                        self.family.member(p),
                        self.spec,
                        cfg.eval_method,
                        cfg.eval_budget,
                        seed=self.step + i,
                    )
                ),
                "member": self.family.describe(p),
            }
            for i, p in enumerate(self.held_out)
        ]
        if self.deployment is not None:
            ev["deployment"] = _estimate_dict(
                estimate(
                    self.model,
                    self.deployment,
                    self.spec,
                    cfg.eval_method,
                    cfg.eval_budget,
                    seed=self.step,
                )
            )
        return ev

    # --- checkpoints ---------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        assert self.pool is not None
        opt_t, opt_meta = flatten_optimizer(self.optimizer.state_dict())
        adv_t, adv_meta = flatten_optimizer(self.pool.optimizer.state_dict())
        groups = {
            "model": self.model.state_dict(),
            "optimizer": opt_t,
            "adversary": self.pool.state(),
            "adversary_optimizer": adv_t,
            "rng": {"state": self.generator.get_state()},
        }
        meta = {
            "config": self.config_fingerprint(),
            "step": self.step,
            "optimizer": opt_meta,
            "adversary_optimizer": adv_meta,
            "report": self.report.to_dict(),
            "model_calls": self.oracle.n_calls,
        }
        save_checkpoint(directory, groups, meta)

    def restore(self, directory: Path) -> None:
        groups, meta = load_checkpoint(directory)
        if meta.get("config") != self.config_fingerprint():
            raise _other_configuration(directory)
        self.model.load_state_dict(groups["model"])
        self.optimizer.load_state_dict(
            unflatten_optimizer(groups.get("optimizer", {}), meta["optimizer"])
        )
        template = self.family.candidates(1, torch.Generator())[0]
        members = AdversaryPool.members_from_state(groups["adversary"], template)
        self.pool = AdversaryPool(self.family, members, self.cfg.adversary_lr)
        self.pool.optimizer.load_state_dict(
            unflatten_optimizer(groups.get("adversary_optimizer", {}), meta["adversary_optimizer"])
        )
        self.generator.set_state(groups["rng"]["state"])
        self.report = HardenReport.from_dict(meta["report"])
        self.step = meta["step"]
        self.oracle.n_calls = meta["model_calls"]


class _AsFamily(Family):
    """A single distribution seen as a family with no parameters (for the shared surrogate)."""

    def __init__(self, dist: Distribution):
        self.dist = dist
        self.event_shape = dist.event_shape

    def candidates(self, n: int, generator: torch.Generator) -> list[Params]:
        return [{} for _ in range(n)]

    def member(self, params: Params) -> Distribution:
        return self.dist

    def constraint(self) -> str:
        return repr(self.dist)


def _check_deployment(deployment: Any, family: Family) -> None:
    if not isinstance(deployment, Distribution):
        raise InvalidArgumentError(
            f"deployment must be a tailguard distribution, got {type(deployment).__name__}"
        )
    if deployment.event_shape != family.event_shape:
        raise ShapeMismatchError(
            f"deployment inputs have shape {deployment.event_shape}; the family's are {family.event_shape}"
        )


def harden(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    spec: Spec,
    family: Family,
    seed: int = 0,
    deployment: Distribution | None = None,
    test: tuple[Tensor, Tensor] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    **settings: Any,
) -> HardenResult:
    """Train a copy of ``model`` on ``train`` against the worst members of ``family``.

    ``deployment`` (optional) is the distribution the model will meet; its
    estimated catastrophe probability is both descended and reported. ``test``
    (X, y) gives clean accuracy at each evaluation. With ``checkpoint_dir``,
    state is saved every ``checkpoint_every`` steps and ``resume=True``
    continues from the last checkpoint. Settings: see HardenSettings.
    """
    check_game(model, spec, family)
    cfg = check_harden_arguments(seed, settings, checkpoint_dir, resume)
    train = _check_train(train, family)
    test = None if test is None else _check_train(test, family, "test")
    judged = [family.member(family.candidates(1, torch.Generator())[0])]
    if deployment is not None:
        _check_deployment(deployment, family)
        judged.append(deployment)
    for dist in judged:
        check_supported(cfg.eval_method, model, dist, spec, "eval_method")
    run = _Run(copy.deepcopy(model), spec, family, train, cfg, seed, deployment, test)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and resume:
        run.restore(ckpt)
    else:
        with torch.no_grad():
            run.oracle.scores(family.member(run.held_out[0]).sample(2, torch.Generator()))
        run.start_adversary()
    start = time.perf_counter() - run.report.seconds
    with _steps_progress(progress, cfg.steps, run.step) as advance:
        while run.step < cfg.steps:
            run.report.steps.append(run.game_step())
            run.step += 1
            if run.step % cfg.eval_every == 0 or run.step == cfg.steps:
                run.report.evals.append(run.evaluate())
            run.report.seconds = time.perf_counter() - start
            run.report.model_calls = run.oracle.n_calls
            if ckpt is not None and (run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps):
                run.save(ckpt)
            advance(run.report.steps[-1])
    run.model.eval()
    return HardenResult(model=run.model, report=run.report)


@contextmanager
def _steps_progress(
    enabled: bool, total: int, done: int
) -> Iterator[Callable[[dict[str, float]], None]]:
    """A rich progress bar over training steps showing the adversary's surrogate log10 p."""
    if not enabled:
        yield lambda row: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        "[bold]harden",
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    ) as bar:
        task = bar.add_task("harden", total=total, completed=done, info="")

        def advance(row: dict[str, float]) -> None:
            info = f"loss {row['task_loss']:.3f}  adversary log10 p {row['adversary_log10_p']:.2f}"
            bar.update(task, advance=1, info=info)

        yield advance
