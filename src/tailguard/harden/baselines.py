"""The methods ``harden`` is benchmarked against, run in the same harness as ``harden`` itself.

Every baseline fine-tunes a copy of the model on the clean training data with
the same optimiser, batch size, learning rate and number of steps as
``harden``; it is judged at the same interval by the same validated estimators
on the same held-out members of the family (and the same deployment
distribution), and returns the same ``HardenResult(model, report)``. Only the
extra loss term differs:

1. ``standard``: none (plain cross-entropy fine-tuning: what doing nothing special gives).
2. ``finetune_adversary``: cross-entropy on samples of the worst members that
   ``tailguard.attack`` found on the starting model, each labelled with the label
   of the base image it was stamped on: training on what the adversary found,
   without the estimator in the loss.
3. ``pgd``: input-space adversarial training over the patch family (Madry et
   al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks");
   see ``patch_pgd.py``.
4. ``lat``: latent adversarial training (Casper et al. 2024; targeted as in
   Sheshadri et al. 2024); see ``latent.py``.

The loss is task + adv_weight * adversarial cross-entropy. The adversary only
attacks rows whose correct answer is itself safe under the spec (for
``ClassIs(k)``: images whose label is not k). ``report.model_calls`` counts the
rows the adversary pushed through the model while searching (the attack, the
PGD steps), which is what ``harden``'s report counts for its own adversary.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..attack import attack
from ..dists.base import Distribution
from ..errors import InvalidArgumentError, ShapeMismatchError, TrainingDivergedError, UnsupportedError
from ..families.base import Family
from ..families.patch import PatchFamily
from ..oracle import eval_mode
from ..specs import Spec
from .latent import LatentPGD, check_layer
from .patch_pgd import PatchPGD
from .trainer import HardenResult, HardenSettings, _check_train, _Run, check_game, reject_unknown_settings


def _require(cfg: object, names: tuple[str, ...], positive_int: bool) -> None:
    """Raise InvalidArgumentError naming the first setting that is not a positive int / number."""
    for name in names:
        value = getattr(cfg, name)
        number = isinstance(value, int) if positive_int else isinstance(value, int | float)
        if isinstance(value, bool) or not number or not value > 0:
            kind = "a positive int" if positive_int else "a number > 0"
            raise InvalidArgumentError(f"{name} must be {kind}, got {value!r}")


@dataclass(frozen=True)
class BaselineSettings:
    """Settings shared with ``harden`` (same defaults), so runs are comparable step for step."""

    steps: int = HardenSettings.steps
    batch_size: int = HardenSettings.batch_size
    lr: float = HardenSettings.lr
    eval_every: int = HardenSettings.eval_every
    eval_budget: int = HardenSettings.eval_budget
    eval_method: str = HardenSettings.eval_method
    held_out: int = HardenSettings.held_out

    def __post_init__(self) -> None:
        self.harness()

    def harness(self) -> HardenSettings:
        """The harden settings that drive the shared harness (validates the shared fields)."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(BaselineSettings)}
        return HardenSettings(**shared)


@dataclass(frozen=True)
class AdversarialSettings(BaselineSettings):
    """Settings of a baseline with an adversarial loss term, weighted by ``adv_weight``."""

    adv_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self, ("adv_weight",), positive_int=False)


@dataclass(frozen=True)
class FinetuneAdversarySettings(AdversarialSettings):
    """``attacks`` runs of tailguard.attack of ``attack_budget`` calls; ``adv_batch`` samples a step."""

    attacks: int = 1
    attack_budget: int = 50_000
    attack_method: str = "auto"
    adv_batch: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self, ("attacks", "attack_budget", "adv_batch"), positive_int=True)


@dataclass(frozen=True)
class PGDSettings(AdversarialSettings):
    """``positions`` random patch positions a batch, ``pgd_steps`` signed steps of ``pgd_step_size``."""

    positions: int = 4
    pgd_steps: int = 5
    pgd_step_size: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self, ("positions", "pgd_steps"), positive_int=True)
        _require(self, ("pgd_step_size",), positive_int=False)


@dataclass(frozen=True)
class LATSettings(AdversarialSettings):
    """Perturb after module ``layer`` (None: first activation) within radius ``epsilon`` x mean norm.

    On the poisoned digits MLP and CNN, epsilon 0.1 / 0.2 / 0.3 trade clean test
    accuracy for trigger removal; 0.2 cost about 0.5 / 2 points of accuracy there.
    """

    layer: int | None = None
    epsilon: float = 0.2
    pgd_steps: int = 5
    targeted: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self, ("pgd_steps",), positive_int=True)
        _require(self, ("epsilon",), positive_int=False)
        if not isinstance(self.targeted, bool):
            raise InvalidArgumentError(f"targeted must be a bool, got {self.targeted!r}")


_SETTINGS: dict[str, type[BaselineSettings]] = {
    "standard": BaselineSettings,
    "finetune_adversary": FinetuneAdversarySettings,
    "pgd": PGDSettings,
    "lat": LATSettings,
}
BASELINES = tuple(_SETTINGS)


class _Method(Protocol):
    """A baseline's extra loss on a clean batch x (b, ...), y (b,), with the rows it may attack."""

    model_calls: int

    def adversarial_loss(
        self, x: Tensor, y: Tensor, safe: Tensor
    ) -> tuple[Tensor | None, dict[str, float]]: ...


class _Clean:
    """No extra term: plain fine-tuning."""

    model_calls = 0

    def adversarial_loss(self, x: Tensor, y: Tensor, safe: Tensor) -> tuple[Tensor | None, dict[str, float]]:
        return None, {}


def base_labels(family: PatchFamily, x: Tensor, y: Tensor, model: nn.Module) -> Tensor:
    """Label of each base image (N,): its training label if it is a training row, else the model's.

    A base image absent from the training set gets the starting model's
    prediction on the unpatched image: the answer the patch must not change.
    """
    base = family.base.to(x.dtype)
    distance, nearest = torch.cdist(base.flatten(1), x.flatten(1)).min(dim=1)
    with eval_mode(model), torch.no_grad():
        predicted = model(base).argmax(1)
    return torch.where(distance <= 1e-5, y[nearest], predicted)


class _AdversarySamples:
    """Cross-entropy on draws from the attack's members, labelled by their mixture component."""

    def __init__(self, run: _Run, cfg: FinetuneAdversarySettings):
        family = run.family
        assert isinstance(family, PatchFamily)
        found = [
            attack(
                run.model,
                run.spec,
                family,
                budget=cfg.attack_budget,
                seed=run.generator,
                method=cfg.attack_method,
            )
            for _ in range(cfg.attacks)
        ]
        self.model_calls = sum(a.n_model_calls for a in found)
        stamped = [family.member(a.params).points for a in found]
        self.centres = torch.stack(stamped).to(run.x.dtype)  # (A, N, H, W), component k on base k
        self.labels = base_labels(family, run.x, run.y, run.model)
        self.noise_std, self.n = family.noise_std, cfg.adv_batch
        self.model, self.generator = run.model, run.generator

    def adversarial_loss(self, x: Tensor, y: Tensor, safe: Tensor) -> tuple[Tensor | None, dict[str, float]]:
        n_members, n_components = self.centres.shape[:2]
        member = torch.randint(n_members, (self.n,), generator=self.generator)
        component = torch.randint(n_components, (self.n,), generator=self.generator)
        centre = self.centres[member, component]
        xs = centre + self.noise_std * torch.randn(centre.shape, generator=self.generator)
        loss = nn.functional.cross_entropy(self.model(xs), self.labels[component])
        return loss, {"adversarial_loss": float(loss.detach())}


def _method(run: _Run, cfg: BaselineSettings) -> _Method:
    if isinstance(cfg, FinetuneAdversarySettings):
        return _AdversarySamples(run, cfg)
    if isinstance(cfg, PGDSettings):
        assert isinstance(run.family, PatchFamily)
        return PatchPGD(
            run.model, run.spec, run.family, cfg.positions, cfg.pgd_steps, cfg.pgd_step_size, run.generator
        )
    if isinstance(cfg, LATSettings):
        layer = check_layer(run.model, cfg.layer)
        assert isinstance(run.model, nn.Sequential)
        return LatentPGD(run.model, run.spec, layer, cfg.epsilon, cfg.pgd_steps, cfg.targeted)
    return _Clean()


def safe_rows(spec: Spec, x: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """(b,) bool: rows whose correct answer, as a one-hot output, is not itself a catastrophe."""
    return spec.score(x, nn.functional.one_hot(y, n_classes).to(x.dtype)) <= 0


def _train_step(run: _Run, method: _Method, cfg: BaselineSettings) -> dict[str, float]:
    """One Adam step on task loss + adv_weight * the method's adversarial loss."""
    run.model.train()
    idx = torch.randint(run.x.shape[0], (cfg.batch_size,), generator=run.generator)
    xb, yb = run.x[idx], run.y[idx]
    logits = run.model(xb)
    task = nn.functional.cross_entropy(logits, yb)
    adversarial, extras = method.adversarial_loss(xb, yb, safe_rows(run.spec, xb, yb, logits.shape[1]))
    loss = task
    if adversarial is not None and isinstance(cfg, AdversarialSettings):
        loss = task + cfg.adv_weight * adversarial
    if not torch.isfinite(loss):
        raise TrainingDivergedError(
            f"loss became {float(loss)} at step {run.step} (task {float(task):.4g}); lower lr or adv_weight"
        )
    run.optimizer.zero_grad()
    loss.backward()
    run.optimizer.step()
    if not all(torch.isfinite(p).all() for p in run.model.parameters()):
        raise TrainingDivergedError(f"model weights became NaN or inf at step {run.step}; lower lr")
    return {
        "step": run.step,
        "task_loss": float(task.detach()),
        "batch_accuracy": float((logits.argmax(1) == yb).float().mean()),
        **extras,
    }


def _check_inputs(
    name: str, model: nn.Module, spec: Spec, family: Family, settings: dict[str, Any]
) -> BaselineSettings:
    if name not in _SETTINGS:
        raise InvalidArgumentError(f"name must be one of {', '.join(BASELINES)}; got {name!r}")
    check_game(model, spec, family)
    kind = _SETTINGS[name]
    reject_unknown_settings(kind, settings, f"baseline {name!r}")
    cfg = kind(**settings)
    if name in ("finetune_adversary", "pgd") and not isinstance(family, PatchFamily):
        raise UnsupportedError(f"baseline {name!r} needs a PatchFamily, got {type(family).__name__}")
    needs_soft = name in ("finetune_adversary", "pgd") or (isinstance(cfg, LATSettings) and cfg.targeted)
    if isinstance(cfg, LATSettings):
        check_layer(model, cfg.layer)
    if needs_soft and not spec.continuous:
        raise UnsupportedError(f"baseline {name!r} needs a spec with a smooth surrogate, not {spec!r}")
    return cfg


def run_baseline(
    name: str,
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    spec: Spec,
    family: Family,
    seed: int = 0,
    test: tuple[Tensor, Tensor] | None = None,
    deployment: Distribution | None = None,
    **settings: Any,
) -> HardenResult:
    """Fine-tune a copy of ``model`` on ``train`` with baseline ``name`` (one of BASELINES).

    Arguments mean what they mean for ``harden``; settings: see the
    ``*Settings`` class of the baseline (shared ones: BaselineSettings).
    """
    cfg = _check_inputs(name, model, spec, family, settings)
    data = _check_train(train, family)
    if deployment is not None and deployment.event_shape != family.event_shape:
        raise ShapeMismatchError(
            f"deployment inputs have shape {deployment.event_shape}; the family's are {family.event_shape}"
        )
    run = _Run(copy.deepcopy(model), spec, family, data, cfg.harness(), seed, deployment, test)
    run.report.settings = {"baseline": name, **dataclasses.asdict(cfg)}
    with torch.no_grad():
        run.oracle.scores(family.member(run.held_out[0]).sample(2, torch.Generator()))
    method = _method(run, cfg)
    start = time.perf_counter()
    while run.step < cfg.steps:
        run.report.steps.append(_train_step(run, method, cfg))
        run.step += 1
        if run.step % cfg.eval_every == 0 or run.step == cfg.steps:
            run.report.evals.append(run.evaluate())
        run.report.seconds = time.perf_counter() - start
        run.report.model_calls = method.model_calls
    run.model.eval()
    return HardenResult(model=run.model, report=run.report)
