"""The LoRA plumbing shared by LM fine-tuning: adapters, and the base model back.

Both LM players of the game (the adversary in ``lm.adversary``, the policy in
``lm.harden``) train only LoRA adapters (``add_lora``), so "the model before
training" is always at hand: the same module with its adapters disabled
(``adapters_off``). That gives their KL terms for free and keeps the trained part
small enough to checkpoint every few steps. Both train in the one game loop,
``harden.game.train_loop``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InvalidArgumentError, require_extra
from ..harden.game import LoopSettings

Progress = Callable[[int, dict[str, float]], None]


def run_config(settings: Any, seed: int) -> dict[str, Any]:
    """What identifies an LM training run for a resume, as the checkpoint's JSON gives it back."""
    config = {"settings": asdict(settings), "kind": type(settings).__name__, "seed": seed}
    return json.loads(json.dumps(config))  # type: ignore[no-any-return]


def add_lora(lm: nn.Module, rank: int = 8, targets: tuple[str, ...] = ("q_proj", "v_proj"),
             seed: int = 0) -> nn.Module:
    """``lm`` with LoRA adapters (peft) on ``targets``; only the adapters train.

    Adapters start at zero (the model is unchanged until it trains): B is zero, and
    A is drawn from ``seed``'s own generator (torch's global one is left as it was).
    The base LM's modules are modified in place: load a separate copy for each model
    you train.
    """
    peft: Any = require_extra("peft", "lm")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise InvalidArgumentError(f"rank must be a positive int, got {rank!r}")
    try:
        config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), lora_dropout=0.0)
        with torch.random.fork_rng(devices=[]):
            wrapped = peft.get_peft_model(lm, config)
    except ValueError as exc:
        raise InvalidArgumentError(f"cannot put LoRA adapters on {list(targets)}: {exc}") from exc
    reset_adapters(wrapped, seed)
    return wrapped  # type: ignore[no-any-return]


def reset_adapters(lm: nn.Module, seed: int) -> None:
    """The LM's LoRA adapters back at a start, in place: B zero (so the LM is as it was before any
    training) and A drawn from ``seed``'s own generator. A fresh adversary starts here."""
    require_adapters(lm)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_A" in name:
                bound = 1.0 / math.sqrt(p.shape[1])  # the default Linear initialisation's scale
                p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) * 2 * bound - bound)
            elif "lora_B" in name:
                p.zero_()


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
    """The parameters that train (the adapters), by name."""
    return {name: p for name, p in lm.named_parameters() if p.requires_grad}


@dataclass(frozen=True)
class TrainingSettings:
    """Steps, messages per step, Adam learning rate, checkpoint interval (steps), and the
    LoRA adapters added to an LM that has none yet (rank, module names)."""

    steps: int = 12
    batch: int = 24
    lr: float = 2e-3
    checkpoint_every: int = 4
    lora_rank: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")

    def loop(self) -> LoopSettings:
        """The game loop's settings (steps, lr, checkpoint interval)."""
        return LoopSettings(self.steps, self.lr, self.checkpoint_every)

    def __post_init__(self) -> None:
        for key in ("steps", "batch", "checkpoint_every", "lora_rank"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"{key} must be a positive int, got {value!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise InvalidArgumentError(f"lr must be a finite number > 0, got {self.lr!r}")
        targets = self.lora_targets
        if not (isinstance(targets, tuple) and targets and all(isinstance(t, str) and t for t in targets)):
            raise InvalidArgumentError(f"lora_targets must be a non-empty tuple of names, got {targets!r}")


def with_adapters(lm: nn.Module, settings: TrainingSettings, seed: int) -> nn.Module:
    """``lm`` itself if it already carries LoRA adapters, else ``lm`` with new ones from ``settings``."""
    if hasattr(lm, "disable_adapter"):
        return lm
    return add_lora(lm, settings.lora_rank, settings.lora_targets, seed)
