"""The LoRA plumbing shared by LM fine-tuning: adapters, the base model back, a resumable loop.

Both LM training runs (the adversary in ``lm.adversary``, the policy in
``lm.harden``) train only LoRA adapters (``add_lora``), so "the model before
training" is always at hand: the same module with its adapters disabled
(``adapters_off``). That gives their KL terms for free and keeps the trained part
small enough to checkpoint every few steps.

``run_training`` is the loop both use: Adam on the adapters, and every
``checkpoint_every`` steps one safetensors file with the adapters, the optimizer, the
history and the random state, from which a killed run resumes exactly (it loses at
most one interval).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InvalidArgumentError, ModelOutputError, require_extra
from ..harden.checkpoint import flatten_optimizer, load_checkpoint, save_checkpoint, unflatten_optimizer

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


def check_forbidden(forbidden: list[int]) -> None:
    """Reject an empty or non-integer list of forbidden token ids."""
    if not forbidden or not all(isinstance(t, int) and t >= 0 for t in forbidden):
        raise InvalidArgumentError("forbidden must be a non-empty list of token ids")


def run_training(lm: nn.Module, step: Callable[[torch.Generator], tuple[Tensor, dict[str, float]]],
                 settings: TrainingSettings, seed: int, checkpoint_dir: str | Path | None,
                 progress: Progress | None) -> list[dict]:
    """Adam on the adapters for ``settings.steps`` steps, resuming from and writing checkpoints.

    ``step(generator)`` returns the loss to descend and the step's figures (the history).
    """
    params = trainable(lm)
    if not params:
        raise InvalidArgumentError("the LM has no trainable parameters")
    optimizer = torch.optim.Adam(params.values(), lr=settings.lr)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    # as the checkpoint's JSON will give it back (tuples become lists)
    config = {"settings": asdict(settings), "kind": type(settings).__name__, "seed": seed}
    config = json.loads(json.dumps(config))
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
