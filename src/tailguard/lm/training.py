"""Fine-tuning language models with LoRA: an adversary that writes attacks, a policy that resists them.

Both runs train only LoRA adapters (``add_lora``), so "the model before training" is
always at hand: the same module with its adapters disabled. That gives the KL terms
for free and keeps the trained part small enough to checkpoint every few steps.

**The adversary** q_phi writes user messages (an ``LMDistribution`` whose LM carries
adapters). It ascends

    J(phi) = ln E_{x~q_phi}[pi(x)] - beta KL(q_phi || q_0),

pi(x) the policy's probability of a forbidden first reply token and q_0 the
adversary before training (its prompt asking for attacks). Messages are discrete, so
the gradient is the score-function (REINFORCE) form with the batch mean as baseline:
grad ln E[pi] = E[(pi / E[pi] - 1) grad ln q], and grad KL = E[(ln q - ln q_0 - b) grad ln q],
both from exact sequence log-probabilities.

**The policy** (``NextTokenLogits`` over an LM with adapters) descends

    max(ln mean_x pi(x), ln floor) + kl_weight * mean_{x ordinary} KL(pi_0(.|x) || pi(.|x)),

the first mean over messages from the adversary and from the deployment
distribution, the KL over the whole first-reply-token distribution on ordinary
messages: the task loss is to answer ordinary messages as the original model did.

Runs checkpoint the adapters, the optimizer, the history and the random state to one
safetensors file every ``checkpoint_every`` steps and resume from it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..dists.lm import LMDistribution
from ..errors import InvalidArgumentError, ModelOutputError, require_extra
from ..harden.checkpoint import flatten_optimizer, load_checkpoint, save_checkpoint, unflatten_optimizer
from .hf import NextTokenLogits
from .proposal import forbidden_mass

Progress = Callable[[int, dict[str, float]], None]


def add_lora(lm: nn.Module, rank: int = 8, targets: tuple[str, ...] = ("q_proj", "v_proj"),
             seed: int = 0) -> nn.Module:
    """``lm`` with LoRA adapters (peft) on ``targets``; only the adapters train.

    Adapters start at zero (the model is unchanged until it trains). The base LM's
    modules are modified in place: load a separate copy for each model you train.
    """
    peft: Any = require_extra("peft", "lm")
    if not isinstance(rank, int) or rank < 1:
        raise InvalidArgumentError(f"rank must be a positive int, got {rank!r}")
    torch.manual_seed(seed)
    try:
        config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), lora_dropout=0.0)
        return peft.get_peft_model(lm, config)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise InvalidArgumentError(f"cannot put LoRA adapters on {list(targets)}: {exc}") from exc


def require_adapters(lm: nn.Module) -> None:
    if not hasattr(lm, "disable_adapter"):
        raise InvalidArgumentError("the LM has no LoRA adapters: wrap it with tailguard.lm.training.add_lora")


@contextmanager
def adapters_off(lm: nn.Module) -> Iterator[None]:
    """The LM as it was before training (its LoRA adapters disabled), without gradients."""
    require_adapters(lm)
    with lm.disable_adapter(), torch.no_grad():  # type: ignore[operator]
        yield


def trainable(lm: nn.Module) -> dict[str, Tensor]:
    return {name: p for name, p in lm.named_parameters() if p.requires_grad}


@dataclass(frozen=True)
class TrainingSettings:
    """Steps, messages per step, Adam learning rate, checkpoint interval (steps)."""

    steps: int = 12
    batch: int = 24
    lr: float = 2e-3
    checkpoint_every: int = 4

    def __post_init__(self) -> None:
        for key in ("steps", "batch", "checkpoint_every"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{key} must be a positive int, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InvalidArgumentError(f"lr must be a finite number > 0, got {self.lr!r}")


@dataclass(frozen=True)
class AdversarySettings(TrainingSettings):
    """``beta``: weight of KL(q_phi || q_0) in nats per message."""

    beta: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise InvalidArgumentError(f"beta must be a finite number >= 0, got {self.beta!r}")


@dataclass(frozen=True)
class PolicySettings(TrainingSettings):
    """``kl_weight`` on the ordinary-message KL; ``floor`` below which the forbidden mass is not pushed."""

    kl_weight: float = 1.0
    floor: float = 1e-7

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise InvalidArgumentError(f"kl_weight must be a finite number >= 0, got {self.kl_weight!r}")
        if not 0 < self.floor < 1:
            raise InvalidArgumentError(f"floor must be in (0, 1), got {self.floor!r}")


def train_adversary(adversary: LMDistribution, policy: nn.Module, forbidden: list[int],
                    settings: AdversarySettings = AdversarySettings(), seed: int = 0,
                    checkpoint_dir: str | Path | None = None, progress: Progress | None = None) -> list[dict]:
    """Ascend ln E_q[pi] - beta KL(q || q_0) over the adversary's adapters; returns the history.

    adversary: an LMDistribution whose ``lm`` has adapters (``add_lora``); policy: message
    ids (n, length) -> first-reply-token logits (n, vocab).
    """
    require_adapters(adversary.lm)
    _check_forbidden(forbidden)

    def step(generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():
            x = adversary.sample(settings.batch, generator)
            pi = forbidden_mass(policy(x), forbidden)
        with adapters_off(adversary.lm):
            log_q0 = adversary.log_prob(x)
        log_q = adversary.log_prob(x)
        kl = log_q.detach() - log_q0
        mean_pi = pi.mean()
        advantage = pi / mean_pi - 1.0 if mean_pi > 0 else torch.zeros_like(pi)
        loss = -(advantage * log_q).mean() + settings.beta * ((kl - kl.mean()) * log_q).mean()
        metrics = {"mean_pi": float(mean_pi), "kl": float(kl.mean()),
                   "objective": math.log(max(float(mean_pi), 1e-300)) - settings.beta * float(kl.mean())}
        return loss, metrics

    return _run(adversary.lm, step, settings, seed, checkpoint_dir, progress)


def harden_policy(policy: NextTokenLogits, attacks: Tensor, ordinary: Tensor, forbidden: list[int],
                  settings: PolicySettings = PolicySettings(), seed: int = 0,
                  checkpoint_dir: str | Path | None = None, progress: Progress | None = None) -> list[dict]:
    """Descend the policy's forbidden mass on attack and ordinary messages, KL-tied to the original.

    attacks, ordinary: pools of message ids (m, length); each step draws ``batch`` of each.
    """
    require_adapters(policy.lm)
    _check_forbidden(forbidden)
    for name, pool in (("attacks", attacks), ("ordinary", ordinary)):
        if not isinstance(pool, Tensor) or pool.dim() != 2 or pool.shape[0] < 1:
            raise InvalidArgumentError(f"{name} must be message ids of shape (m, length), m >= 1")

    def step(generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        a = attacks[torch.randint(attacks.shape[0], (settings.batch,), generator=generator)]
        o = ordinary[torch.randint(ordinary.shape[0], (settings.batch,), generator=generator)]
        with adapters_off(policy.lm):
            reference = torch.log_softmax(policy(o).double(), -1)
        logits = policy(torch.cat([a, o])).double()
        pi = forbidden_mass(logits, forbidden)
        log_new = torch.log_softmax(logits[settings.batch:], -1)
        kl = (reference.exp() * (reference - log_new)).sum(1).mean()
        log_mass = torch.log(pi.mean())
        loss = torch.clamp(log_mass, min=math.log(settings.floor)) + settings.kl_weight * kl
        metrics = {"mean_pi_attacks": float(pi[: settings.batch].mean()),
                   "mean_pi_ordinary": float(pi[settings.batch:].mean()), "kl": float(kl)}
        return loss, metrics

    return _run(policy.lm, step, settings, seed, checkpoint_dir, progress)


def first_token_kl(policy: NextTokenLogits, messages: Tensor, batch: int = 32) -> Tensor:
    """KL(original || trained) (n,) of the first reply token on each message, in nats."""
    parts = []
    for i in range(0, messages.shape[0], batch):
        x = messages[i : i + batch]
        with adapters_off(policy.lm):
            reference = torch.log_softmax(policy(x).double(), -1)
        with torch.no_grad():
            new = torch.log_softmax(policy(x).double(), -1)
        parts.append((reference.exp() * (reference - new)).sum(1))
    return torch.cat(parts)


def _check_forbidden(forbidden: list[int]) -> None:
    if not forbidden or not all(isinstance(t, int) and t >= 0 for t in forbidden):
        raise InvalidArgumentError("forbidden must be a non-empty list of token ids")


def _run(lm: nn.Module, step: Callable[[torch.Generator], tuple[Tensor, dict[str, float]]],
         settings: TrainingSettings, seed: int, checkpoint_dir: str | Path | None,
         progress: Progress | None) -> list[dict]:
    """Adam on the adapters for ``settings.steps`` steps, resuming from and writing checkpoints."""
    params = trainable(lm)
    if not params:
        raise InvalidArgumentError("the LM has no trainable parameters")
    optimizer = torch.optim.Adam(params.values(), lr=settings.lr)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    config = {"settings": asdict(settings), "kind": type(settings).__name__, "seed": seed}
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None and (folder / "checkpoint.safetensors").is_file():
        history = _resume(folder, config, params, optimizer, generator)
    was_training = lm.training
    lm.train()
    try:
        for index in range(len(history), settings.steps):
            loss, metrics = step(generator)
            if not torch.isfinite(loss):
                raise ModelOutputError(f"the training loss became {float(loss)} at step {index}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append({"step": index, **metrics})
            due = (index + 1) % settings.checkpoint_every == 0 or index + 1 == settings.steps
            if folder is not None and due:
                _save(folder, config, params, optimizer, generator, history)
            if progress is not None:
                progress(index, metrics)
    finally:
        lm.train(was_training)
    return history


def _save(folder: Path, config: dict[str, Any], params: dict[str, Tensor], optimizer: torch.optim.Optimizer,
          generator: torch.Generator, history: list[dict]) -> None:
    opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
    save_checkpoint(folder, {"adapters": dict(params), "optimizer": opt_tensors,
                             "rng": {"state": generator.get_state()}},
                    {"config": config, "optimizer": opt_meta, "history": history})


def _resume(folder: Path, config: dict[str, Any], params: dict[str, Tensor], optimizer: torch.optim.Optimizer,
            generator: torch.Generator) -> list[dict]:
    groups, meta = load_checkpoint(folder)
    if meta.get("config") != config:
        raise InvalidArgumentError(f"the checkpoint in {folder} was written by a run with other settings "
                                   f"({meta.get('config')}); use another folder or the same settings")
    adapters = groups.get("adapters", {})
    if set(adapters) != set(params):
        raise InvalidArgumentError(f"the checkpoint in {folder} holds other adapters than this model's")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(adapters[name])
    optimizer.load_state_dict(unflatten_optimizer(groups.get("optimizer", {}), meta["optimizer"]))
    generator.set_state(groups["rng"]["state"])
    return list(meta["history"])
