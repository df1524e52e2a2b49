"""Harden an LM policy against an adversary, and report what it changed on held-out messages.

The policy is a ``NextTokenLogits`` (message ids -> first-reply-token logits) over an
LM that trains LoRA adapters; "the original policy" is the same module with its
adapters disabled. In the game (``harden.game``) it is an ``LMPolicy`` and descends

    kl_weight * mean_{x ordinary} KL(pi_0(.|x) || pi(.|x))
      + mean_{pools} max(ln mean_{x in pool} pi(x), ln floor),

pi(x) = exp(spec.soft) its probability of a catastrophic first reply token (for
``NextTokenIn``: a forbidden one), the pools the adversary's messages and ordinary
messages from the deployment distribution D, the KL over the whole
first-reply-token distribution on ordinary messages from D: the task loss is to
answer ordinary messages as the original did. The log of the mean (not the mean)
keeps the gradient alive as the mass falls by orders of magnitude; the floor stops
pushing where nothing more can be measured.

``policy_report`` says what hardening did, before (adapters off) against after, on
fixed message sets that training never saw, paired so that the ratio is not
sampling noise: the forbidden mass on each set with a 95 % CI, and the first-token
KL on held-out ordinary messages (what the hardening cost).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._logspace import normal_log_ci, to_log10
from ..dists.lm import LMDistribution
from ..errors import InvalidArgumentError
from ..harden.adversary import FixedAdversary
from ..harden.checkpoint import FILE_NAME
from ..harden.game import Game, train_loop
from ..harden.objective import Objective
from ..harden.policy import Batch
from ..oracle import ScoreOracle
from ..result import Estimate
from ..specs import Spec
from .adversary import AdversaryResult, AdversarySettings, catastrophe_mass, train_adversary
from .hf import NextTokenLogits
from .training import Progress, TrainingSettings, adapters_off, run_config, trainable, with_adapters


@dataclass(frozen=True)
class PolicySettings(TrainingSettings):
    """``kl_weight`` on the ordinary-message KL; ``floor`` below which the catastrophe mass is not pushed."""

    kl_weight: float = 1.0
    floor: float = 1e-7

    def __post_init__(self) -> None:
        super().__post_init__()
        weight = self.kl_weight
        if not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0):
            raise InvalidArgumentError(f"kl_weight must be a finite number >= 0, got {self.kl_weight!r}")
        if not (isinstance(self.floor, int | float) and 0 < self.floor < 1):
            raise InvalidArgumentError(f"floor must be in (0, 1), got {self.floor!r}")


@dataclass(frozen=True)
class HardenResult:
    """The hardened policy (the same module, now with trained adapters) and one row per step:
    ``attacks_log10_p``, ``ordinary_log10_p`` (log10 mean pi on the step's batches), ``kl``, ``step``."""

    policy: NextTokenLogits
    history: list[dict[str, float]]
    settings: PolicySettings
    seed: int


class LMPolicy:
    """A language-model policy of the game: LoRA adapters train, the task is to stay its frozen self.

    Task loss: ``kl_weight`` times the mean first-token KL(original || trained) on a
    batch of ordinary messages (m, length).
    """

    def __init__(self, policy: NextTokenLogits, ordinary: Tensor, batch: int, kl_weight: float):
        self.model, self.ordinary, self.batch, self.kl_weight = policy, ordinary, batch, kl_weight

    def trainable(self) -> dict[str, Tensor]:
        return trainable(self.model.lm)

    def task_loss(self, generator: torch.Generator) -> tuple[Tensor, Batch, dict[str, float]]:
        o = self.ordinary[torch.randint(self.ordinary.shape[0], (self.batch,), generator=generator)]
        with adapters_off(self.model.lm):
            reference = torch.log_softmax(self.model(o).double(), -1)
        log_new = torch.log_softmax(self.model(o).double(), -1)
        kl = (reference.exp() * (reference - log_new)).sum(1).mean()
        return self.kl_weight * kl, (o, reference), {"kl": float(kl.detach())}


def _check_messages(**pools: Tensor) -> None:
    for name, pool in pools.items():
        if not isinstance(pool, Tensor) or pool.dim() != 2 or pool.shape[0] < 1:
            raise InvalidArgumentError(f"{name} must be message ids of shape (m, length), m >= 1")


def harden_policy(policy: NextTokenLogits, attacks: Tensor, ordinary: Tensor, spec: Spec,
                  settings: PolicySettings = PolicySettings(), seed: int = 0,
                  checkpoint_dir: str | Path | None = None, progress: Progress | None = None) -> HardenResult:
    """Descend the policy's catastrophe mass on attack and ordinary messages, KL-tied to the original.

    attacks, ordinary: pools of message ids (m, length); each step draws ``settings.batch``
    of each. If ``policy.lm`` has no LoRA adapters yet they are added in place, so the
    policy must own its copy of the LM (not the one that writes D or the attacks).
    """
    if not isinstance(policy, NextTokenLogits):
        raise InvalidArgumentError(f"policy must be a NextTokenLogits, got {type(policy).__name__}")
    if not isinstance(spec, Spec):
        raise InvalidArgumentError(f"spec must be a tailguard spec, got {type(spec).__name__}")
    _check_messages(attacks=attacks, ordinary=ordinary)
    lm: Any = with_adapters(policy.lm, settings, seed)
    policy.lm = lm
    oracle = ScoreOracle.for_model(policy, spec)
    floor = math.log(settings.floor)
    pools = [FixedAdversary(name, pool, oracle, settings.batch, 1.0, floor)
             for name, pool in (("attacks", attacks), ("ordinary", ordinary))]
    # lam 1/2: the two pools' terms are averaged, so the risk weighs as one term against the KL
    game = Game(LMPolicy(policy, ordinary, settings.batch, settings.kl_weight), pools, Objective(lam=0.5),
                oracle=oracle)
    resume = checkpoint_dir is not None and (Path(checkpoint_dir) / FILE_NAME).is_file()

    def on_step(done: int, row: dict[str, Any]) -> None:
        if progress is not None:
            progress(done - 1, {k: v for k, v in row.items() if k != "step"})

    was_training = policy.training
    try:
        trace = train_loop(game, settings.loop(), seed, run_config(settings, seed), checkpoint_dir, resume,
                           on_step)
    finally:
        policy.train(was_training)
    return HardenResult(policy, trace.steps, settings, seed)


@dataclass(frozen=True)
class Round:
    """One round of the game: the policy hardened on every attack message so far (``policy``), then
    the adversary trained again against it (``adversary``); ``attacks``: the pool the policy trained on."""

    number: int
    policy: HardenResult
    adversary: AdversaryResult
    attacks: Tensor


def play_rounds(policy: NextTokenLogits, adversary: LMDistribution, ordinary: Tensor, spec: Spec, rounds: int,
                pool: int, policy_settings: PolicySettings, adversary_settings: AdversarySettings,
                seed: int = 0, checkpoint_dir: str | Path | None = None, progress: Progress | None = None,
                after_round: Callable[[Round], None] | None = None) -> list[Round]:
    """Rounds of the game between an LM policy and an LM adversary (with adapters, already trained).

    Each round the adversary writes ``pool`` fresh messages, added to those of the
    rounds before; the policy is hardened on all of them and on ``ordinary``
    (``harden_policy``), and the adversary is trained again against the hardened
    policy (``train_adversary``): it adapts, and the next round trains on what it
    then writes. ``after_round(round)`` is called at the end of each round, while
    the policy is still that round's (to measure it against the adapted adversary). Round r checkpoints under
    ``checkpoint_dir/policy-r`` and ``checkpoint_dir/adversary-vs-hardened-r``.
    """
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise InvalidArgumentError(f"rounds must be a positive int, got {rounds!r}")
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    generator = torch.Generator().manual_seed(seed)
    pools: list[Tensor] = []
    played: list[Round] = []
    for r in range(1, rounds + 1):
        with torch.no_grad():
            pools.append(adversary.sample(pool, generator))
        attacks = torch.cat(pools)
        hardened = harden_policy(policy, attacks, ordinary, spec, policy_settings, seed=seed + r - 1,
                                 checkpoint_dir=_inside(folder, f"policy-{r}"), progress=progress)
        again = train_adversary(adversary, policy, spec, adversary_settings, seed=seed + r,
                                checkpoint_dir=_inside(folder, f"adversary-vs-hardened-{r}"),
                                progress=progress)
        played.append(Round(r, hardened, again, attacks))
        if after_round is not None:
            after_round(played[-1])
    return played


def _inside(folder: Path | None, name: str) -> Path | None:
    return None if folder is None else folder / name


def first_token_kl(policy: NextTokenLogits, messages: Tensor, batch: int = 32) -> Tensor:
    """KL(original || trained) (n,) of the first reply token on each message (n, length), in nats."""
    parts = []
    for i in range(0, messages.shape[0], batch):
        x = messages[i : i + batch]
        with adapters_off(policy.lm):
            reference = torch.log_softmax(policy(x).double(), -1)
        with torch.no_grad():
            new = torch.log_softmax(policy(x).double(), -1)
        parts.append((reference.exp() * (reference - new)).sum(1))
    return torch.cat(parts)


def mass_on(policy: NextTokenLogits, messages: Tensor, spec: Spec, confidence: float = 0.95,
            batch: int = 32) -> Estimate:
    """The mean catastrophe mass pi over fixed messages (n, length) as an Estimate (normal CI on the mean).

    Each message's pi is exact, so the CI covers only which messages were drawn.
    """
    start = time.perf_counter()
    with torch.no_grad():
        pi = torch.cat([catastrophe_mass(policy, spec, messages[i : i + batch])
                        for i in range(0, messages.shape[0], batch)])
    mean = float(pi.mean())
    n = pi.numel()
    if mean > 0:
        rel_se = float(pi.std()) / math.sqrt(n) / mean if n > 1 else math.inf
        low, high = normal_log_ci(math.log(mean), rel_se, confidence)
    else:
        low = high = -math.inf
    return Estimate(
        log10_p=to_log10(math.log(mean)) if mean > 0 else -math.inf, ci_log10=(to_log10(low), to_log10(high)),
        n_model_calls=n, method="fixed-messages", seconds=time.perf_counter() - start, confidence=confidence,
        diagnostics={"messages": n, "distinct": int(torch.unique(messages, dim=0).shape[0]), "mean": mean,
                     "max_forbidden_mass": float(pi.max())},
    )


@dataclass(frozen=True)
class PolicyReport:
    """Forbidden mass per named message set, before and after hardening, and the KL it cost."""

    before: dict[str, Estimate]
    after: dict[str, Estimate]
    kl_mean: float
    kl_max: float
    kl_messages: int

    def lowered_by(self, name: str) -> float:
        """How many times lower the mass on message set ``name`` is after hardening."""
        return float(10.0 ** (self.before[name].log10_p - self.after[name].log10_p))

    def __str__(self) -> str:
        """A table to read: one line per message set (before, after, factor), then the KL it cost."""
        width = max(len(name) for name in self.before)
        lines = [f"{'message set':<{width}}  log10 mass before -> after  (lowered by)"]
        for name, before in self.before.items():
            after = self.after[name]
            factor = self.lowered_by(name)
            shown = f"{factor:.3g}x" if math.isfinite(factor) else "all of it"
            counts = f"{before.diagnostics['messages']} messages, {before.diagnostics['distinct']} distinct"
            change = f"{before.log10_p:8.2f} -> {after.log10_p:8.2f}"
            lines.append(f"{name:<{width}}  {change}  ({shown}; {counts})")
        lines.append(f"first-token KL on {self.kl_messages} held-out ordinary messages: "
                     f"mean {self.kl_mean:.3g} nats, max {self.kl_max:.3g}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        def row(e: Estimate) -> dict[str, Any]:
            return {"messages": e.diagnostics["messages"], "distinct": e.diagnostics["distinct"],
                    "mean": e.diagnostics["mean"], "log10": e.log10_p, "ci_log10": list(e.ci_log10)}

        return {"before": {k: row(e) for k, e in self.before.items()},
                "after": {k: row(e) for k, e in self.after.items()},
                "kl_first_token": {"mean": self.kl_mean, "max": self.kl_max, "messages": self.kl_messages}}


def policy_report(policy: NextTokenLogits, messages: dict[str, Tensor], spec: Spec,
                  held_out_ordinary: Tensor) -> PolicyReport:
    """Before (adapters off) and after (as trained) on each message set, and the KL on ordinary messages.

    messages: name -> message ids (n, length), none of them used in training;
    held_out_ordinary: ordinary messages (n, length) from D that training never saw.
    """
    if not isinstance(spec, Spec):
        raise InvalidArgumentError(f"spec must be a tailguard spec, got {type(spec).__name__}")
    if not messages:
        raise InvalidArgumentError("messages must name at least one message set")
    with adapters_off(policy.lm):
        before = {name: mass_on(policy, x, spec) for name, x in messages.items()}
    after = {name: mass_on(policy, x, spec) for name, x in messages.items()}
    kl = first_token_kl(policy, held_out_ordinary)
    return PolicyReport(before, after, float(kl.mean()), float(kl.max()), kl.numel())
