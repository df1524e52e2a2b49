"""The one training loop of the hardening game, for every kind of model and adversary.

A ``Player`` is whatever trains: it names its trainable tensors and, given the
step and the run's generator, returns the loss to descend. ``train_loop`` runs
Adam on those tensors for a number of steps, checks every loss and every update
(one error, ``TrainingDivergedError``, keeping the last good checkpoint),
calls back after each step (evaluations, progress), and checkpoints the whole
state (the trainable tensors, Adam's, the player's own, the random state and the
history) in one safetensors file, from which a killed run resumes bit for bit.

``Game`` is the player of a hardening run: a ``Policy`` (``harden.policy``)
against ``Adversary``s (``harden.adversary``), combined by an ``Objective``
(``harden.objective``). Each step every adversary first moves against the
current policy (the policy frozen), then the policy's loss is its task loss
plus the floored, weighted log-probabilities the adversaries estimate; optional
``LossTerm`` plug-ins add other adversarial losses (the baselines). An LM
adversary trained alone (``lm.adversary.train_adversary``) is a player too.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .._logspace import LN10
from ..errors import InvalidArgumentError, TrainingDivergedError
from ..oracle import ScoreOracle, eval_mode
from .adversary import Adversary
from .checkpoint import flatten_optimizer, load_checkpoint, save_checkpoint, unflatten_optimizer
from .objective import Objective, Term
from .policy import Batch, Policy

Groups = dict[str, dict[str, Tensor]]


class Player(Protocol):
    """What ``train_loop`` trains."""

    def trainable(self) -> dict[str, Tensor]:
        """The tensors Adam updates, by name (fixed for the run)."""
        ...

    def loss(self, step: int, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """The scalar loss to descend at ``step`` and the step's figures."""
        ...

    def state(self) -> tuple[Groups, dict[str, Any]]:
        """State beyond the trainable tensors (tensor groups, JSON metadata) for a checkpoint."""
        ...

    def load_state(self, groups: Groups, meta: dict[str, Any]) -> None: ...


class LossTerm(Protocol):
    """An extra adversarial loss on the policy's batch (the baselines' plug-in)."""

    model_calls: int

    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor | None, dict[str, float]]: ...


@dataclass(frozen=True)
class LoopSettings:
    """Steps, Adam learning rate, and how often (in steps) to checkpoint."""

    steps: int
    lr: float
    checkpoint_every: int

    def __post_init__(self) -> None:
        for name in ("steps", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
            raise InvalidArgumentError(f"lr must be a finite number > 0, got {lr!r}")


@dataclass
class Trace:
    """What a run did: one row per step, the evaluations made along the way, its wall time."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


OnStep = Callable[[int, dict[str, Any]], "dict[str, Any] | None"]
#: whether the run may stop now, given its trace so far (asked after each step's evaluation)
Stop = Callable[[Trace], bool]


def other_configuration(directory: Path) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"the checkpoint in {directory} was written by a run with a different configuration; "
        "resume with the same settings, seed, spec, family and data, or use a new directory"
    )


def recorded_config(directory: Path) -> Any:
    """The configuration a checkpoint was written with (to refuse a resume before any work)."""
    return load_checkpoint(directory)[1].get("config")


def train_loop(
    player: Player,
    settings: LoopSettings,
    seed: int,
    config: dict[str, Any],
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_step: OnStep | None = None,
    stop: Stop | None = None,
) -> Trace:
    """Adam on ``player.trainable()`` for at most ``settings.steps`` steps; see the module docstring.

    ``config`` (JSON data) identifies the run: a resume from a checkpoint written
    with another one is refused. ``on_step(steps_done, row)`` may return an
    evaluation, which is kept in the trace (and the checkpoint). ``stop(trace)``,
    asked after every step, ends the run early when it returns True; it decides
    from the trace alone, so a resumed run stops where the uninterrupted one did.
    """
    params = player.trainable()
    if not params:
        raise InvalidArgumentError("there is nothing to train: the model has no trainable parameters")
    optimizer = torch.optim.Adam(params.values(), lr=settings.lr)
    generator = torch.Generator().manual_seed(seed)
    trace = Trace()
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume:
        if folder is None:
            raise InvalidArgumentError("resume=True needs checkpoint_dir")
        trace = _restore(folder, config, player, params, optimizer, generator)
    started = time.perf_counter() - trace.seconds
    step = len(trace.steps)
    while step < settings.steps and not (stop is not None and step > 0 and stop(trace)):
        loss, row = player.loss(step, generator)
        if not torch.isfinite(loss.detach()):
            raise TrainingDivergedError(
                f"the loss became {float(loss.detach())} at step {step}; lower lr or the risk weight; "
                "the last good checkpoint is kept"
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if not all(torch.isfinite(p).all() for p in params.values()):
            raise TrainingDivergedError(
                f"the weights became NaN or inf at step {step}; lower lr; the last good checkpoint is kept"
            )
        trace.steps.append({"step": step, **row})
        step += 1
        if on_step is not None:
            evaluation = on_step(step, trace.steps[-1])
            if evaluation is not None:
                trace.evals.append(evaluation)
        trace.seconds = time.perf_counter() - started
        if folder is not None and step % settings.checkpoint_every == 0:
            _save(folder, config, player, params, optimizer, generator, trace)
    if folder is not None:
        _save(folder, config, player, params, optimizer, generator, trace)
    return trace


def _save(folder: Path, config: dict[str, Any], player: Player, params: dict[str, Tensor],
          optimizer: torch.optim.Optimizer, generator: torch.Generator, trace: Trace) -> None:
    opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
    groups, player_meta = player.state()
    clash = set(groups) & {"trainable", "optimizer", "rng"}
    if clash:
        raise InvalidArgumentError(f"a player's state may not use the group names {sorted(clash)}")
    save_checkpoint(
        folder,
        {"trainable": {k: p.detach() for k, p in params.items()}, "optimizer": opt_tensors,
         "rng": {"state": generator.get_state()}, **groups},
        {"config": config, "step": len(trace.steps), "optimizer": opt_meta, "player": player_meta,
         "trace": dataclasses.asdict(trace)},
    )


def _restore(folder: Path, config: dict[str, Any], player: Player, params: dict[str, Tensor],
             optimizer: torch.optim.Optimizer, generator: torch.Generator) -> Trace:
    groups, meta = load_checkpoint(folder)
    if meta.get("config") != config:
        raise other_configuration(folder)
    saved = groups.get("trainable", {})
    if set(saved) != set(params):
        raise InvalidArgumentError(f"the checkpoint in {folder} holds tensors other than this run's")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    optimizer.load_state_dict(unflatten_optimizer(groups.get("optimizer", {}), meta["optimizer"]))
    generator.set_state(groups["rng"]["state"])
    player.load_state({k: v for k, v in groups.items() if k not in ("trainable", "optimizer", "rng")},
                      meta["player"])
    return Trace(**meta["trace"])


class Game:
    """The player of a hardening run: one policy, its adversaries, the objective, optional plug-ins.

    ``terms`` are (LossTerm, weight) pairs added to the loss as weight * term;
    ``oracle`` is the one the adversaries score through (its calls are the
    search's cost, kept across a resume).
    """

    def __init__(self, policy: Policy, adversaries: Sequence[Adversary], objective: Objective,
                 terms: Sequence[tuple[LossTerm, float]] = (), oracle: ScoreOracle | None = None):
        names = [a.name for a in adversaries]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"adversaries need distinct names, got {names}")
        self.policy, self.adversaries, self.objective = policy, list(adversaries), objective
        self.terms, self.oracle = terms, oracle

    @property
    def model(self) -> nn.Module:
        return self.policy.model

    @property
    def model_calls(self) -> int:
        """Model calls the adversaries and plug-ins spent searching (not the policy's own batches)."""
        searched = self.oracle.n_calls if self.oracle is not None else 0
        return searched + sum(t.model_calls for t, _ in self.terms)

    def trainable(self) -> dict[str, Tensor]:
        return self.policy.trainable()

    def loss(self, step: int, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        row: dict[str, float] = {}
        with eval_mode(self.model):
            for adversary in self.adversaries:
                row.update(adversary.step(step, generator))
        self.model.train()
        task, batch, metrics = self.policy.task_loss(generator)
        row.update(metrics)
        terms = []
        for adversary in self.adversaries:
            log_probs = adversary.log_probs(generator)
            terms.append(Term(log_probs, adversary.floor, adversary.weight))
            row[f"{adversary.name}_log10_p"] = float(log_probs.detach().max()) / LN10
        loss = self.objective.loss(task, terms)
        for term, weight in self.terms:
            extra, figures = term.loss(batch, generator)
            row.update(figures)
            if extra is not None:
                loss = loss + weight * extra
        return loss, row

    def state(self) -> tuple[Groups, dict[str, Any]]:
        groups: Groups = {}
        meta: dict[str, Any] = {"oracle_calls": self.oracle.n_calls if self.oracle is not None else 0}
        for adversary in self.adversaries:
            tensors, adversary_meta = adversary.state()
            groups[f"adversary.{adversary.name}"] = tensors
            meta[adversary.name] = adversary_meta
        return groups, meta

    def load_state(self, groups: Groups, meta: dict[str, Any]) -> None:
        if self.oracle is not None:
            self.oracle.n_calls = meta["oracle_calls"]
        for adversary in self.adversaries:
            adversary.load_state(groups.get(f"adversary.{adversary.name}", {}), meta[adversary.name])
