"""The defender's side of the hardening game: what trains, and the task it must keep doing.

A ``Policy`` holds the model the adversaries score, names the tensors that
train, and computes its task loss on a batch of ordinary inputs: the loss that
keeps the model useful while the risk terms remove its failures. Inputs are
handed to the model as they are (token ids stay integers). Here:

- ``ClassifierPolicy``: cross-entropy on labelled examples, optionally plus the
  distillation loss to a frozen teacher (the model the run started from):
  cross-entropy alone stops pulling once a training example is classified
  right, so the risk terms can shave the margins of the target class until
  unseen examples of it fall over; matching the teacher's tempered outputs
  keeps those margins where they were on ordinary inputs;
- ``ControlPolicy``: a continuous control policy, mean squared error to the
  demonstrated actions (behaviour cloning);

and, for a language model trained through adapters with the KL to its frozen
self on ordinary messages as task loss, ``tailguard.lm.harden.LMPolicy``.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from ..errors import InvalidArgumentError, ShapeMismatchError
from ..oracle import eval_mode
from ..specs import Spec

#: (inputs (b, *event_shape), targets (b, ...)) of one step: what plug-in adversarial losses see
Batch = tuple[Tensor, Tensor]


class Policy(Protocol):
    @property
    def model(self) -> nn.Module:
        """The module the adversaries score: inputs -> outputs the spec judges."""
        ...

    def trainable(self) -> dict[str, Tensor]:
        """The tensors that train, by name."""
        ...

    def task_loss(self, generator: torch.Generator) -> tuple[Tensor, Batch, dict[str, float]]:
        """The task loss on a fresh batch, the batch, and the step's figures."""
        ...


def check_examples(inputs: Tensor, targets: Tensor, name: str) -> None:
    """Paired rows of inputs and targets, at least one, or a named error."""
    if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
        raise InvalidArgumentError(f"{name} must be a pair of tensors (X, y)")
    if inputs.dim() == 0 or targets.dim() == 0:
        raise ShapeMismatchError(f"{name} X and y need a row per example; got scalars")
    if inputs.shape[0] != targets.shape[0]:
        raise ShapeMismatchError(f"{name} X has {inputs.shape[0]} rows but y has {targets.shape[0]}")
    if inputs.shape[0] < 1:
        raise ShapeMismatchError(f"{name} has no rows")


class _Supervised:
    """A model fitted on (inputs, targets) by mini-batches of ``batch_size`` random rows."""

    def __init__(self, model: nn.Module, inputs: Tensor, targets: Tensor, batch_size: int):
        check_examples(inputs, targets, "train")
        self.model, self.inputs, self.targets, self.batch_size = model, inputs, targets, batch_size

    def trainable(self) -> dict[str, Tensor]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def _batch(self, generator: torch.Generator) -> Batch:
        idx = torch.randint(self.inputs.shape[0], (self.batch_size,), generator=generator)
        return self.inputs[idx], self.targets[idx]


class ClassifierPolicy(_Supervised):
    """A classifier: cross-entropy of labels y (n,) long; figures: task_loss, batch_accuracy.

    With a ``teacher`` (frozen; typically a copy of the starting model), the task
    loss adds ``distill`` times the distillation loss at ``distill_temperature`` T:
    T^2 KL(softmax(teacher / T) || softmax(model / T)) (Hinton, Vinyals & Dean
    2015, "Distilling the knowledge in a neural network"); figure: distill_loss.
    """

    def __init__(self, model: nn.Module, inputs: Tensor, targets: Tensor, batch_size: int,
                 teacher: nn.Module | None = None, distill: float = 0.0, distill_temperature: float = 4.0):
        super().__init__(model, inputs, targets, batch_size)
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.teacher, self.distill, self.distill_temperature = teacher, distill, distill_temperature

    def task_loss(self, generator: torch.Generator) -> tuple[Tensor, Batch, dict[str, float]]:
        x, y = self._batch(generator)
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits, y)
        figures = {"task_loss": float(loss.detach()),
                   "batch_accuracy": float((logits.argmax(1) == y).float().mean())}
        if self.teacher is not None and self.distill > 0:
            t = self.distill_temperature
            with torch.no_grad():
                target = nn.functional.log_softmax(self.teacher(x) / t, dim=1)
            kl = nn.functional.kl_div(nn.functional.log_softmax(logits / t, dim=1), target, log_target=True,
                                      reduction="batchmean") * t**2
            figures["distill_loss"] = float(kl.detach())
            loss = loss + self.distill * kl
        return loss, (x, y), figures


class ControlPolicy(_Supervised):
    """A continuous control policy: squared error to demonstrated actions (n, action_dim)."""

    def task_loss(self, generator: torch.Generator) -> tuple[Tensor, Batch, dict[str, float]]:
        x, a = self._batch(generator)
        predicted = self.model(x)
        if predicted.shape != a.shape:
            raise ShapeMismatchError(f"the policy returned actions {tuple(predicted.shape)}; "
                                     f"the demonstrations have {tuple(a.shape)}")
        loss = ((predicted - a.to(predicted.dtype)) ** 2).sum(1).mean()
        return loss, (x, a), {"task_loss": float(loss.detach())}


def safe_rows(model: nn.Module, spec: Spec, x: Tensor, y: Tensor) -> Tensor:
    """(b,) bool: rows whose correct label, as a one-hot output, is not itself a catastrophe.

    An adversarial loss may only push rows whose right answer is safe (for
    ``ClassIs(k)``: examples not labelled k) away from the catastrophe.
    """
    with torch.no_grad(), eval_mode(model):
        n_classes = model(x[:1]).shape[1]
    return spec.score(x, nn.functional.one_hot(y, n_classes).to(x.dtype)) <= 0
