"""The methods ``harden`` is benchmarked against: plug-ins of the same game loop.

Every baseline fine-tunes a copy of the model on the clean training data in
``harden.game.train_loop`` with the same policy (``ClassifierPolicy``),
optimiser, batch size, learning rate and number of steps as ``harden``; it is
judged at the same interval by the same validated estimators on the same
held-out members of the family (and the same deployment distribution), and
returns the same ``HardenResult(model, report)``. Only the extra loss term (a
``LossTerm`` plug-in of ``harden.game.Game``) differs:

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
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..attack import attack
from ..dists.base import Distribution
from ..errors import InvalidArgumentError, ShapeMismatchError, UnsupportedError
from ..families.base import Family
from ..families.patch import PatchFamily
from ..oracle import ScoreOracle, eval_mode
from ..specs import Spec
from .game import Game, LoopSettings, LossTerm, train_loop
from .latent import LatentPGD, check_layer
from .objective import Objective
from .patch_pgd import PatchPGD
from .policy import Batch, ClassifierPolicy
from .report import HardenReport
from .trainer import (
    HardenResult,
    HardenSettings,
    _check_train,
    _held_out_members,
    check_game,
    check_labels_fit,
    final_verdict,
    held_out_evaluation,
    probe,
    reject_unknown_settings,
)


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
    judge_budget: int = HardenSettings.judge_budget
    judge_sampling_budget: int = HardenSettings.judge_sampling_budget
    judge_attack_budget: int = HardenSettings.judge_attack_budget
    judge_attack_method: str = HardenSettings.judge_attack_method

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


class _Clean:
    """No extra term: plain fine-tuning."""

    model_calls = 0

    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor | None, dict[str, float]]:
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
    """Cross-entropy on draws from the attack's members, labelled by their mixture component.

    The attacks run on the starting model at the first step, with the run's generator.
    """

    def __init__(self, model: nn.Module, spec: Spec, family: PatchFamily, train: tuple[Tensor, Tensor],
                 cfg: FinetuneAdversarySettings):
        self.model, self.spec, self.family, self.cfg = model, spec, family, cfg
        self.labels = base_labels(family, *train, model)
        self.centres: Tensor | None = None
        self.model_calls = 0

    def _attack(self, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        cfg = self.cfg
        found = [
            attack(self.model, self.spec, self.family, budget=cfg.attack_budget, seed=generator,
                   method=cfg.attack_method)
            for _ in range(cfg.attacks)
        ]
        self.model_calls = sum(a.n_model_calls for a in found)
        stamped = [self.family.member(a.params).points for a in found]
        return torch.stack(stamped).to(dtype)  # (A, N, H, W), component k on base k

    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor | None, dict[str, float]]:
        if self.centres is None:
            self.centres = self._attack(generator, batch[0].dtype)
        n_members, n_components = self.centres.shape[:2]
        n = self.cfg.adv_batch
        member = torch.randint(n_members, (n,), generator=generator)
        component = torch.randint(n_components, (n,), generator=generator)
        centre = self.centres[member, component]
        xs = centre + self.family.noise_std * torch.randn(centre.shape, generator=generator)
        loss = nn.functional.cross_entropy(self.model(xs), self.labels[component])
        return loss, {"adversarial_loss": float(loss.detach())}


def _plug_in(model: nn.Module, spec: Spec, family: Family, train: tuple[Tensor, Tensor],
             cfg: BaselineSettings) -> LossTerm:
    if isinstance(cfg, FinetuneAdversarySettings):
        assert isinstance(family, PatchFamily)
        return _AdversarySamples(model, spec, family, train, cfg)
    if isinstance(cfg, PGDSettings):
        assert isinstance(family, PatchFamily)
        return PatchPGD(model, spec, family, cfg.positions, cfg.pgd_steps, cfg.pgd_step_size)
    if isinstance(cfg, LATSettings):
        layer = check_layer(model, cfg.layer)
        assert isinstance(model, nn.Sequential)
        return LatentPGD(model, spec, layer, cfg.epsilon, cfg.pgd_steps, cfg.targeted)
    return _Clean()


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
    data = _check_train(train, family, model)
    test = None if test is None else _check_train(test, family, model, "test")
    if deployment is not None and deployment.event_shape != family.event_shape:
        raise ShapeMismatchError(
            f"deployment inputs have shape {deployment.event_shape}; the family's are {family.event_shape}"
        )
    harness = cfg.harness()
    trained = copy.deepcopy(model)
    held_out = _held_out_members(family, harness.held_out, seed)
    probe(ScoreOracle.for_model(trained, spec), family, held_out[0])
    check_labels_fit(trained, train=data, test=test)
    plug_in = _plug_in(trained, spec, family, data, cfg)
    game = Game(ClassifierPolicy(trained, *data, cfg.batch_size), [], Objective(), [(plug_in, _weight(cfg))])
    evaluate = held_out_evaluation(trained, spec, family, held_out, deployment, test, cfg.eval_method,
                                   cfg.eval_budget)

    def on_step(done: int, row: dict[str, Any]) -> dict[str, Any] | None:
        return evaluate(done) if done % cfg.eval_every == 0 or done == cfg.steps else None

    trace = train_loop(game, LoopSettings(cfg.steps, cfg.lr, harness.checkpoint_every), seed,
                       {"baseline": name}, on_step=on_step)
    trained.eval()
    report = HardenReport(settings={"baseline": name, **dataclasses.asdict(cfg)},
                          constraint=family.constraint(), seed=seed, steps=trace.steps, evals=trace.evals,
                          seconds=trace.seconds, model_calls=game.model_calls,
                          verdict=final_verdict(trained, spec, family, held_out, deployment, harness, seed))
    return HardenResult(model=trained, report=report)


def _weight(cfg: BaselineSettings) -> float:
    return cfg.adv_weight if isinstance(cfg, AdversarialSettings) else 0.0
