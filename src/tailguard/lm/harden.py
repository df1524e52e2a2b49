"""Harden an LM policy against an adversary, and report what it changed on held-out messages.

The policy is a ``NextTokenLogits`` (message ids -> first-reply-token logits) over an
LM that trains LoRA adapters; "the original policy" is the same module with its
adapters disabled. It descends

    max(ln mean_x pi(x), ln floor) + kl_weight * mean_{x ordinary} KL(pi_0(.|x) || pi(.|x)),

pi(x) its probability of a forbidden first reply token, the first mean over messages
from the adversary and from the deployment distribution D, the KL over the whole
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._logspace import normal_log_ci, to_log10
from ..errors import InvalidArgumentError
from ..result import Estimate
from .hf import NextTokenLogits
from .proposal import forbidden_mass
from .training import Progress, TrainingSettings, adapters_off, check_forbidden, run_training, with_adapters


@dataclass(frozen=True)
class PolicySettings(TrainingSettings):
    """``kl_weight`` on the ordinary-message KL; ``floor`` below which the forbidden mass is not pushed."""

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
    ``mean_pi_attacks``, ``mean_pi_ordinary``, ``kl``, ``step``."""

    policy: NextTokenLogits
    history: list[dict[str, float]]
    settings: PolicySettings
    seed: int


def harden_policy(policy: NextTokenLogits, attacks: Tensor, ordinary: Tensor, forbidden: list[int],
                  settings: PolicySettings = PolicySettings(), seed: int = 0,
                  checkpoint_dir: str | Path | None = None, progress: Progress | None = None) -> HardenResult:
    """Descend the policy's forbidden mass on attack and ordinary messages, KL-tied to the original.

    attacks, ordinary: pools of message ids (m, length); each step draws ``settings.batch``
    of each. If ``policy.lm`` has no LoRA adapters yet they are added in place, so the
    policy must own its copy of the LM (not the one that writes D or the attacks).
    """
    if not isinstance(policy, NextTokenLogits):
        raise InvalidArgumentError(f"policy must be a NextTokenLogits, got {type(policy).__name__}")
    check_forbidden(forbidden)
    for name, pool in (("attacks", attacks), ("ordinary", ordinary)):
        if not isinstance(pool, Tensor) or pool.dim() != 2 or pool.shape[0] < 1:
            raise InvalidArgumentError(f"{name} must be message ids of shape (m, length), m >= 1")
    lm: Any = with_adapters(policy.lm, settings, seed)
    policy.lm = lm

    def step(generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        a = attacks[torch.randint(attacks.shape[0], (settings.batch,), generator=generator)]
        o = ordinary[torch.randint(ordinary.shape[0], (settings.batch,), generator=generator)]
        with adapters_off(policy.lm):
            reference = torch.log_softmax(policy(o).double(), -1)
        logits = policy(torch.cat([a, o])).double()
        pi = forbidden_mass(logits, forbidden)
        log_new = torch.log_softmax(logits[settings.batch:], -1)
        kl = (reference.exp() * (reference - log_new)).sum(1).mean()
        loss = torch.clamp(torch.log(pi.mean()), min=math.log(settings.floor)) + settings.kl_weight * kl
        metrics = {"mean_pi_attacks": float(pi[: settings.batch].mean()),
                   "mean_pi_ordinary": float(pi[settings.batch:].mean()), "kl": float(kl)}
        return loss, metrics

    history = run_training(policy.lm, step, settings, seed, checkpoint_dir, progress)
    return HardenResult(policy, history, settings, seed)


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


def mass_on(policy: NextTokenLogits, messages: Tensor, forbidden: list[int], confidence: float = 0.95,
            batch: int = 32) -> Estimate:
    """The mean forbidden mass over fixed messages (n, length) as an Estimate (normal CI on the mean).

    Each message's pi is exact, so the CI covers only which messages were drawn.
    """
    start = time.perf_counter()
    with torch.no_grad():
        pi = torch.cat([forbidden_mass(policy(messages[i : i + batch]), forbidden)
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

    def to_dict(self) -> dict[str, Any]:
        def row(e: Estimate) -> dict[str, Any]:
            return {"messages": e.diagnostics["messages"], "distinct": e.diagnostics["distinct"],
                    "mean": e.diagnostics["mean"], "log10": e.log10_p, "ci_log10": list(e.ci_log10)}

        return {"before": {k: row(e) for k, e in self.before.items()},
                "after": {k: row(e) for k, e in self.after.items()},
                "kl_first_token": {"mean": self.kl_mean, "max": self.kl_max, "messages": self.kl_messages}}


def policy_report(policy: NextTokenLogits, messages: dict[str, Tensor], forbidden: list[int],
                  held_out_ordinary: Tensor) -> PolicyReport:
    """Before (adapters off) and after (as trained) on each message set, and the KL on ordinary messages.

    messages: name -> message ids (n, length), none of them used in training;
    held_out_ordinary: ordinary messages (n, length) from D that training never saw.
    """
    check_forbidden(forbidden)
    if not messages:
        raise InvalidArgumentError("messages must name at least one message set")
    with adapters_off(policy.lm):
        before = {name: mass_on(policy, x, forbidden) for name, x in messages.items()}
    after = {name: mass_on(policy, x, forbidden) for name, x in messages.items()}
    kl = first_token_kl(policy, held_out_ordinary)
    return PolicyReport(before, after, float(kl.mean()), float(kl.max()), kl.numel())
